"""Robustness against a real engine: engine death and restart, overload, auth, fuzzing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from loadtests.servers import ServerProcess as RunningServer
from loadtests.servers import start_bonserve

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

API_KEY = "test-key"
# Small caps keep every valid fuzzed request cheap; eager mode starts the engine faster.
STRICT_FLAGS = (
    "--enforce-eager",
    "--max-tokens-limit",
    "8",
    "--default-max-tokens",
    "8",
    "--max-n",
    "2",
    "--max-concurrent-requests",
    "1",
    "--max-waiting-requests",
    "1",
    "--max-body-bytes",
    "16384",
    "--api-key",
    API_KEY,
    "--max-model-len",
    "512",
)


@pytest.fixture(scope="module")
def strict_server(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = start_bonserve(tmp_path_factory.mktemp("strict"), *STRICT_FLAGS)
    yield srv
    srv.stop()


def _chat(srv: RunningServer, **kw: object) -> dict:
    return {"model": srv.model, "messages": [{"role": "user", "content": "Say hi."}], **kw}


def test_api_key_enforced(strict_server: RunningServer) -> None:
    url = strict_server.v1 + "/chat/completions"
    assert httpx.post(url, json=_chat(strict_server)).status_code == 401
    r = httpx.post(url, json=_chat(strict_server), headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert r.status_code == 200
    assert httpx.get(strict_server.base_url + "/ready").status_code == 200


def test_overload_gets_429_and_everything_else_succeeds(strict_server: RunningServer) -> None:
    async def burst() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(headers=headers, timeout=60) as c:
            return await asyncio.gather(
                *(
                    c.post(strict_server.v1 + "/chat/completions", json=_chat(strict_server, n=2))
                    for _ in range(8)
                )
            )

    codes = [r.status_code for r in asyncio.run(burst())]
    assert set(codes) <= {200, 429} and codes.count(200) >= 2 and codes.count(429) >= 1, codes


def test_oversized_body_is_413(strict_server: RunningServer) -> None:
    big = _chat(strict_server, messages=[{"role": "user", "content": "z" * 20000}])
    r = httpx.post(
        strict_server.v1 + "/chat/completions", json=big, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_fuzz_openapi_no_server_errors(strict_server: RunningServer, tmp_path: Path) -> None:
    """schemathesis generates requests from our OpenAPI spec (valid and invalid ones) for
    every operation; the `not_a_server_error` check fails the run on any 5xx."""
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        strict_server.base_url + "/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "60",
        "--seed",
        "1",
        "--generation-deterministic",
        "--request-timeout",
        "60",
        "-H",
        f"Authorization: Bearer {API_KEY}",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.server.fuzz_hooks", "FUZZ_MODEL": strict_server.model}
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=800, env=env, cwd=Path(__file__).parents[2]
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    print(result.stdout[-3000:])


def test_server_serves_after_fuzzing(strict_server: RunningServer) -> None:
    c = openai.OpenAI(base_url=strict_server.v1, api_key=API_KEY, max_retries=0, timeout=60)
    r = c.chat.completions.create(
        model=strict_server.model, max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    )
    assert r.choices[0].message.content
    assert strict_server.ready()["engines"]["policy"]["restarts"] == 0


def _engine_core(srv: RunningServer) -> psutil.Process:
    for child in psutil.Process(srv.process.pid).children(recursive=True):
        if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no EngineCore child process found")


def test_dead_engine_fails_inflight_with_503_and_restarts(
    default_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    srv = start_bonserve(
        tmp_path_factory.mktemp("restart"), "--enforce-eager", "--engine-restart-backoff-s", "0.5"
    )
    try:
        body = {
            "model": srv.model,
            "max_tokens": 1000,
            "logit_bias": {"2": -100},
            "messages": [{"role": "user", "content": "Write a long story."}],
        }

        async def inflight_then_kill() -> httpx.Response:
            async with httpx.AsyncClient(timeout=120) as c:
                task = asyncio.create_task(c.post(srv.v1 + "/chat/completions", json=body))
                await asyncio.sleep(1.5)
                _engine_core(srv).kill()
                return await task

        r = asyncio.run(inflight_then_kill())
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "engine_unavailable"
        assert r.headers["retry-after"]
        assert httpx.get(srv.base_url + "/health").status_code == 200
        # while restarting: not ready, and new requests get a fast 503
        ready = httpx.get(srv.base_url + "/ready")
        if ready.status_code == 503:
            assert ready.json()["engines"]["policy"]["state"] in ("dead", "restarting")
        body_ok = {**body, "max_tokens": 4, "logit_bias": None}
        deadline = time.monotonic() + 300
        while not srv.ready()["ready"]:
            assert time.monotonic() < deadline, "engine did not come back"
            during = httpx.post(srv.v1 + "/chat/completions", json=body_ok, timeout=60)
            if during.status_code == 200:
                # the engine came back between the readiness probe and this request
                assert srv.ready()["ready"], during.text
                break
            assert during.status_code == 503, during.text
            assert during.json()["error"]["code"] == "engine_unavailable"
            time.sleep(0.5)
        assert srv.ready()["engines"]["policy"]["restarts"] == 1
        ok = httpx.post(srv.v1 + "/chat/completions", json=body_ok, timeout=60)
        assert ok.status_code == 200, ok.text

        # graceful shutdown: SIGTERM while a request runs; it completes, then the server exits
        async def inflight_then_sigterm() -> httpx.Response:
            async with httpx.AsyncClient(timeout=120) as c:
                task = asyncio.create_task(
                    c.post(srv.v1 + "/chat/completions", json={**body, "max_tokens": 60})
                )
                await asyncio.sleep(0.5)
                srv.process.send_signal(signal.SIGTERM)
                return await task

        r = asyncio.run(inflight_then_sigterm())
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 60
        # uvicorn re-raises the captured SIGTERM once drained: a clean exit "by" the signal
        assert srv.process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        srv.stop()
