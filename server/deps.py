"""FastAPI dependencies: application state and auth, as `Annotated` aliases."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from server.config import Settings
from server.errors import APIError
from server.state import AppState


def get_state(request: Request) -> AppState:
    state = request.app.state.bonserve  # starlette's State is untyped; build_app sets this
    if not isinstance(state, AppState):
        raise TypeError(f"app.state.bonserve is {type(state).__name__}, not AppState")
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def _check_bearer(request: Request, expected: str | None, what: str) -> None:
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), expected):
        raise APIError(
            401,
            f"Invalid or missing {what} key: send 'Authorization: Bearer <key>'.",
            type="authentication_error",
            code="invalid_api_key",
        )


def require_api_key(request: Request, settings: SettingsDep) -> None:
    _check_bearer(request, settings.api_key, "API")


def require_admin_key(request: Request, settings: SettingsDep) -> None:
    _check_bearer(request, settings.admin_key, "admin")


ApiKeyDep = Depends(require_api_key)
AdminKeyDep = Depends(require_admin_key)
