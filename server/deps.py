"""FastAPI dependencies: application state and auth, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.auth import refusal
from server.config import Settings
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


# Declare the bearer schemes in OpenAPI (so /docs has an Authorize button with one field per
# key); the decision itself is server.auth.refusal, also applied by the middleware before the
# body is read.
_bearer = HTTPBearer(
    auto_error=False, scheme_name="ApiKey", description="Authorization: Bearer <API key> (--api-key)"
)
_admin_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AdminKey",
    description="Authorization: Bearer <admin key> (--admin-key), for /admin/*",
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
AdminBearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)]


def _check(request: Request, settings: Settings, area: str) -> None:
    error = refusal(area, request.headers.get("authorization"), settings)
    if error is not None:
        raise error


def require_api_key(request: Request, settings: SettingsDep, _: BearerDep) -> None:
    _check(request, settings, "api")


def require_admin_key(request: Request, settings: SettingsDep, _: AdminBearerDep) -> None:
    _check(request, settings, "admin")


ApiKeyDep = Depends(require_api_key)
AdminKeyDep = Depends(require_admin_key)
