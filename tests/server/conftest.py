"""Fixtures for server tests over the named fake engine (tests/server/fakes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from server.admission import Admission
from server.app import build_app, build_state
from server.config import Settings
from server.engines import ManagedEngine
from server.models import ModelRouter, ServedModel
from server.state import AppState
from tests.server.fakes import FakeAsyncLLM, FakeEngineBuilder

Serve = Callable[..., Awaitable[AppState]]


def make_state(settings: Settings, factory: Callable[[], Any]) -> AppState:
    engine = ManagedEngine("policy", factory, restart_backoff_s=0, watch_interval_s=0.05)
    router = ModelRouter()
    router.add(ServedModel(name="fake", engine=engine))
    return AppState(
        settings=settings,
        router=router,
        engines={"policy": engine},
        admission=Admission(
            settings.max_concurrent_requests,
            settings.max_waiting_requests,
            price_per_hour=settings.accelerator_price_per_hour,
        ),
    )


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[..., Any]]:
    states: list[AppState] = []

    async def make(factory: Callable[[], Any] = FakeAsyncLLM, **overrides: Any) -> httpx.AsyncClient:
        settings = Settings(**overrides)
        state = make_state(settings, factory)
        await state.engines["policy"].start()
        states.append(state)
        app = build_app(settings, state)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

    yield make
    for state in states:
        await state.engines["policy"].stop()


def assert_envelope(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    return err


@pytest.fixture
async def serve(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Serve]:
    """`build_state` as `bonserve serve` runs it, on fake engines: `await serve(**settings)`
    over the module's `SERVE_DEFAULTS` and its `registry` fixture; engines stop at teardown."""
    registry = request.getfixturevalue("registry")
    defaults: dict[str, Any] = getattr(request.module, "SERVE_DEFAULTS", {})
    monkeypatch.setattr("server.app.EngineBuilder", FakeEngineBuilder)
    monkeypatch.setattr("server.model_manager.available_memory", lambda: 1 << 40)
    states: list[AppState] = []

    async def make(**overrides: Any) -> AppState:
        values = {"registry": registry.root, **defaults, **overrides}
        state = build_state(Settings(**values))
        states.append(state)
        for engine in state.engines.values():
            await engine.start()
        assert state.manager is not None
        await state.manager.start()
        return state

    yield make
    for state in states:
        await asyncio.gather(*(e.stop() for e in state.engines.values()))


def asgi_client(state: AppState) -> httpx.AsyncClient:
    """An httpx client on `state`'s app, in process."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_app(state.settings, state)), base_url="http://t"
    )
