"""HTTP behaviour over a named fake engine: envelopes, limits, auth, timeouts, engine death.

Fast (no vLLM engine); the same behaviours are exercised against the real engine in
tests/server/test_openai_e2e.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from server.app import build_app
from server.config import Settings
from server.engines import EngineState
from server.models import ServedModel
from tests.server.conftest import assert_envelope, make_state
from tests.server.fakes import FakeAsyncLLM

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


async def test_chat_shape_and_usage(client_for: Callable[..., Any]) -> None:
    c = await client_for()
    r = await c.post("/v1/chat/completions", json={**CHAT, "n": 3})
    body = r.json()
    assert r.status_code == 200
    assert [ch["index"] for ch in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 3 * 3  # 3 candidates x 3 fake tokens
    breakdown = body["usage"]["bonserve"]
    assert {
        k: breakdown[k] for k in ("candidates", "delivered_tokens", "decoded_tokens", "reward_model_tokens")
    } == {"candidates": 3, "delivered_tokens": 9, "decoded_tokens": 9, "reward_model_tokens": 0}
    assert breakdown["engine_seconds"] >= 0 and breakdown["estimated_cost_usd"] == 0.0


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({**CHAT, "n": 17}, 400, "n"),
        ({**CHAT, "max_tokens": 4096}, 400, "max_tokens"),
        ({**CHAT, "max_tokens": 120, "messages": [{"role": "user", "content": "x" * 30}]}, 400, "max_tokens"),
        ({**CHAT, "messages": [{"role": "user", "content": "x" * 200}]}, 400, "messages"),
        ({**CHAT, "model": "nope"}, 404, "model"),
        ({**CHAT, "best_of": 4}, 400, "best_of"),
        ({**CHAT, "logit_bias": {"5000": 1}}, 400, "logit_bias"),
        ({**CHAT, "temperature": "hot"}, 400, "temperature"),
        ({**CHAT, "n": 2, "best_of": 1}, 400, "best_of"),
        ({**CHAT, "top_logprobs": 2}, 400, "top_logprobs"),
    ],
)
async def test_bad_requests_get_envelopes(
    client_for: Callable[..., Any], body: dict[str, Any], status: int, param: str
) -> None:
    c = await client_for()
    err = assert_envelope(await c.post("/v1/chat/completions", json=body), status)
    assert err["param"] == param


async def test_malformed_json_and_body_cap(client_for: Callable[..., Any]) -> None:
    c = await client_for(max_body_bytes=2048)
    r = await c.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert_envelope(r, 400, "invalid_json")
    big = {**CHAT, "messages": [{"role": "user", "content": "y" * 5000}]}
    assert_envelope(await c.post("/v1/chat/completions", json=big), 413, "request_too_large")


async def test_api_key_required_when_set(client_for: Callable[..., Any]) -> None:
    c = await client_for(api_key="sekret")
    assert_envelope(await c.post("/v1/chat/completions", json=CHAT), 401, "invalid_api_key")
    assert_envelope(await c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    ok = await c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sekret"})
    assert ok.status_code == 200
    assert (await c.get("/health")).status_code == 200  # probes stay open


async def test_timeout_is_504(client_for: Callable[..., Any]) -> None:
    c = await client_for(lambda: FakeAsyncLLM(delay_s=5), request_timeout_s=0.2)
    assert_envelope(await c.post("/v1/chat/completions", json=CHAT), 504, "request_timeout")


async def test_full_queue_is_429_with_retry_after(client_for: Callable[..., Any]) -> None:
    c = await client_for(lambda: FakeAsyncLLM(delay_s=0.5), max_concurrent_requests=1, max_waiting_requests=1)
    rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=CHAT) for _ in range(5)))
    codes = sorted(r.status_code for r in rs)
    assert codes == [200, 200, 429, 429, 429]
    rejected = next(r for r in rs if r.status_code == 429)
    assert rejected.headers["retry-after"] == "1"
    assert_envelope(rejected, 429, "queue_full")


async def test_engine_death_gives_503_then_restart(client_for: Callable[..., Any]) -> None:
    engines = [FakeAsyncLLM(die_on_generate=True), FakeAsyncLLM()]
    c = await client_for(lambda: engines.pop(0))
    assert_envelope(await c.post("/v1/chat/completions", json=CHAT), 503, "engine_unavailable")
    for _ in range(100):
        ready = (await c.get("/ready")).json()
        if ready["ready"]:
            break
        await asyncio.sleep(0.02)
    assert ready["engines"]["policy"]["restarts"] == 1
    assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_start_failure_is_reported_not_crashing(client_for: Callable[..., Any]) -> None:
    def broken() -> Any:
        raise OSError("weights missing")

    c = await client_for(broken)
    r = await c.get("/ready")
    assert r.status_code == 503
    assert r.json()["engines"]["policy"]["state"] == EngineState.FAILED
    assert_envelope(await c.post("/v1/chat/completions", json=CHAT), 503)


async def test_streaming_over_fake(client_for: Callable[..., Any]) -> None:
    c = await client_for()
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [ln async for ln in r.aiter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert '"usage"' in lines[-2]


async def test_unknown_route_and_method_use_envelope(client_for: Callable[..., Any]) -> None:
    c = await client_for()
    assert_envelope(await c.get("/v1/nothing"), 404)
    assert_envelope(await c.get("/v1/chat/completions"), 405)


async def test_request_id_is_echoed_or_generated(client_for: Callable[..., Any]) -> None:
    c = await client_for()
    r = await c.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await c.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "bad id\n"})
    assert r.headers["x-request-id"] != "bad id\n" and len(r.headers["x-request-id"]) == 32
    assert (await c.get("/nope")).headers["x-request-id"]


@pytest.mark.parametrize("body", [CHAT, {**CHAT, "stream": True}])
async def test_model_is_resolved_once_per_request(body: dict[str, Any]) -> None:
    """The access log's mode and the engine request come from one resolution of `model`."""
    settings = Settings()
    state = make_state(settings, FakeAsyncLLM)
    await state.engines["policy"].start()
    calls: list[str] = []
    resolve = state.router.resolve

    def counting(name: str) -> ServedModel:
        calls.append(name)
        return resolve(name)

    state.router.resolve = counting  # type: ignore[method-assign]
    app = build_app(settings, state)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200
    await state.engines["policy"].stop()
    assert calls == ["fake"]
