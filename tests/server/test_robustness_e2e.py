"""Robustness against a real engine: engine death and restart, overload, auth, fuzzing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def run_schemathesis(
    srv: RunningServer,
    report_dir: Path,
    env: dict[str, str],
    *,
    max_examples: int,
    seed: int,
    timeout_s: float,
    key: str | None = None,
) -> None:
    """schemathesis over `srv`'s OpenAPI spec with the `not_a_server_error` check (the hooks
    in tests/server/fuzz_hooks.py read `env`); `key` is sent on every request when given."""
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", srv.base_url + "/openapi.json"]
    cmd += ["--checks", "not_a_server_error", "--max-examples", str(max_examples), "--seed", str(seed)]
    cmd += ["--generation-deterministic", "--request-timeout", "60"]
    cmd += ["-H", f"Authorization: Bearer {key}"] if key else []
    cmd += ["--report", "junit", "--report-dir", str(report_dir)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.server.fuzz_hooks", **env}
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=Path(__file__).parents[2]
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    print(result.stdout[-3000:])


def test_fuzz_openapi_no_server_errors(strict_server: RunningServer, tmp_path: Path) -> None:
    """schemathesis generates requests from our OpenAPI spec (valid and invalid ones) for
    every operation; the `not_a_server_error` check fails the run on any 5xx."""
    env = {"FUZZ_MODEL": strict_server.model}
    run_schemathesis(strict_server, tmp_path, env, max_examples=60, seed=1, timeout_s=800, key=API_KEY)


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

        # A client that hangs up on a non-streamed request: the engine request is aborted and
        # the request counts as 499 (client closed), not as a server error.
        async def hang_up() -> None:
            async with httpx.AsyncClient(timeout=120) as c:
                task = asyncio.create_task(c.post(srv.v1 + "/chat/completions", json=body))
                await asyncio.sleep(1.5)
                task.cancel()  # closes the connection mid-request
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        asyncio.run(hang_up())
        deadline = time.monotonic() + 30
        while 'status="499"' not in (text := httpx.get(srv.base_url + "/metrics").text):
            assert time.monotonic() < deadline, "the hang-up was not counted as 499"
            time.sleep(0.5)
        requests = [line for line in text.splitlines() if line.startswith("bonserve_requests_total{")]
        assert not [line for line in requests if 'status="5' in line], requests
        assert srv.ready()["engines"]["policy"]["unfinished_requests"] == 0  # aborted in the engine

        # A stream whose client leaves after the headers, before any content: nothing stays in
        # flight (admission slot, engine request).
        async def leave_after_headers() -> None:
            async with (
                httpx.AsyncClient(timeout=120) as c,
                c.stream("POST", srv.v1 + "/chat/completions", json={**body, "stream": True}) as r,
            ):
                assert r.status_code == 200

        asyncio.run(leave_after_headers())
        deadline = time.monotonic() + 15  # well before its 1000 tokens could have decoded
        while not (
            "bonserve_requests_in_flight 0.0" in httpx.get(srv.base_url + "/metrics").text
            and srv.ready()["engines"]["policy"]["unfinished_requests"] == 0
        ):
            assert time.monotonic() < deadline, "the abandoned stream is still in flight"
            time.sleep(0.5)

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


# --------------------------------------------------------------------------- with a reward model

RM = "rm-robustness"  # a random score head: these tests need scoring to run, not to mean anything
POLICY = "smollm2-135m-instruct"
ADMIN_KEY = "test-admin-key"
NOT_EOS = {"0": -100, "2": -100}  # no end token sampled: every candidate decodes to max_tokens


@pytest.fixture(scope="module")
def rm_registry(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding one reward model made from the base checkpoint."""
    from core.registry import Registry
    from training.reward import init_reward_model

    registry = Registry(tmp_path_factory.mktemp("rm-registry"))
    init_reward_model(Registry(default_model.parent), default_model.name, RM, seed=0, out=registry)
    return registry.root


def _with_reward_model(default_model: Path, registry: Path) -> tuple[str, ...]:
    return (
        "--model",
        str(default_model),
        "--served-model-name",
        POLICY,
        "--registry",
        str(registry),
        "--reward-model",
        RM,
    )


def _engine_cores(srv: RunningServer) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(srv.process.pid).children(recursive=True)
        if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline())
    ]


def _spawned_nobind(p: psutil.Process) -> bool:
    """Whether `p` or a process below it was exec'd with the reward engine's environment."""
    with contextlib.suppress(psutil.Error):
        for q in (p, *p.children(recursive=True)):
            if q.environ().get("VLLM_CPU_OMP_THREADS_BIND") == "nobind":
                return True
    return False


def _reward_engine_core(srv: RunningServer) -> psutil.Process:
    """The reward engine's EngineCore. Both look alike; the reward engine is spawned with its
    own thread placement (core/engine_args.py reward_engine_env), but /proc/PID/environ shows
    a process's environment as it was exec'd, so a forked EngineCore may not show it (its
    exec'd workers do). Without that mark: the younger one (the policy engine starts first)."""
    cores = _engine_cores(srv)
    assert len(cores) == 2, cores
    marked = [p for p in cores if _spawned_nobind(p)]
    if len(marked) == 1:
        return marked[0]
    assert not marked, "both engines look like the reward engine"
    return max(cores, key=lambda p: p.create_time())


def _sse_events(lines: list[str]) -> list[str]:
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


@dataclass
class DeathRun:
    """What the clients saw while the reward engine died and came back."""

    stream_status: int = 0
    stream_lines: list[str] = field(default_factory=list)
    bon: httpx.Response | None = None
    after: httpx.Response | None = None  # Best-of-N once the reward engine is back
    singles: list[httpx.Response] = field(default_factory=list)  # the plain requests, all along
    during: list[httpx.Response] = field(default_factory=list)  # Best-of-N while it restarted
    readiness: list[dict[str, Any]] = field(default_factory=list)  # /ready bodies while it restarted


def test_reward_engine_death_under_concurrent_traffic(
    default_model: Path, rm_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Kill only the reward engine's core while a streamed and a non-streamed Best-of-N
    request decode and a loop of plain requests runs: the Best-of-N requests fail with 503
    engine_unavailable (the streamed one, whose 200 went out, as an error event that ends the
    stream), every plain request succeeds, the reward engine restarts once on its own, and
    Best-of-N serves again; nothing answers another 5xx, nothing hangs."""
    srv = start_bonserve(
        tmp_path_factory.mktemp("rm-death"),
        *_with_reward_model(default_model, rm_registry),
        "--enforce-eager",
        # the dead reward engine stays down for at least 20 s, so the Best-of-N requests in
        # flight (~5-10 s of decoding) reach their scoring while it is down, on any box
        "--engine-restart-backoff-s",
        "20",
        "--max-model-len",
        "512",
        "--max-tokens-limit",
        "384",
        "--default-max-tokens",
        "16",
        "--max-best-of",
        "4",
        "--request-timeout-s",
        "240",
    )
    url = srv.v1 + "/chat/completions"
    messages = [{"role": "user", "content": "Write a long story about a goldfish."}]
    bon = {"model": POLICY, "messages": messages, "best_of": 4, "n": 1, "max_tokens": 192}
    bon |= {"temperature": 1.0, "logit_bias": NOT_EOS}
    single = {"model": POLICY, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
    run = DeathRun()

    async def scenario() -> None:
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=httpx.Timeout(240, connect=10)) as c:

            async def plain_loop() -> None:
                while not stop.is_set():
                    run.singles.append(await c.post(url, json=single))
                    await asyncio.sleep(0.1)

            async def streamed(headers_in: asyncio.Event) -> None:
                async with c.stream("POST", url, json={**bon, "stream": True}) as r:
                    headers_in.set()
                    run.stream_status = r.status_code
                    run.stream_lines = [line async for line in r.aiter_lines()]

            loop = asyncio.create_task(plain_loop())
            headers_in = asyncio.Event()
            stream_task = asyncio.create_task(streamed(headers_in))
            bon_task = asyncio.create_task(c.post(url, json=bon))
            await asyncio.wait_for(headers_in.wait(), 60)
            await asyncio.sleep(1.0)  # the candidates are decoding (~5-10 s of them)
            assert not stream_task.done() and not bon_task.done(), "Best-of-N ended before the kill"
            assert srv.ready()["engines"]["reward"]["state"] == "running"
            _reward_engine_core(srv).kill()
            await asyncio.wait_for(stream_task, 240)
            run.bon = await asyncio.wait_for(bon_task, 240)

            # the reward engine restarts by itself; Best-of-N meanwhile gets a fast 503
            deadline = time.monotonic() + 300
            while True:
                assert time.monotonic() < deadline, f"reward engine did not come back: {run.readiness[-3:]}"
                ready = (await c.get(srv.base_url + "/ready", timeout=10)).json()
                run.readiness.append(ready)
                if ready["engines"]["reward"]["state"] == "running":
                    break
                run.during.append(await c.post(url, json={**bon, "max_tokens": 4}))
                await asyncio.sleep(0.5)
            run.after = await c.post(url, json={**bon, "max_tokens": 8, "seed": 3})
            stop.set()
            await asyncio.wait_for(loop, 240)

    try:
        asyncio.run(asyncio.wait_for(scenario(), 600))
        # the non-streamed Best-of-N in flight: 503 with OpenAI's error envelope
        assert run.bon is not None and run.bon.status_code == 503, run.bon and run.bon.text
        assert run.bon.json()["error"]["code"] == "engine_unavailable" and run.bon.headers["retry-after"]
        # the streamed one had its 200: the error arrives as an event, then the stream ends
        events = _sse_events(run.stream_lines)
        assert run.stream_status == 200 and events[-1] == "[DONE]", run.stream_lines
        assert len(events) == 2, events  # nothing but the error: no winner was chosen
        error = json.loads(events[0])["error"]
        assert error["code"] == "engine_unavailable" and error["type"] == "service_unavailable", error
        # the policy engine was untouched: every plain request of the whole test succeeded
        assert len(run.singles) >= 5
        assert all(s.status_code == 200 for s in run.singles), [
            s.text for s in run.singles if s.status_code != 200
        ]
        # Best-of-N sent while the reward engine restarted: a 503 saying so (or, at the very
        # end, a 200), never another 5xx
        for r in run.during:
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "engine_unavailable", r.text
        # /ready: the reward engine seen down and back after one restart, the policy never down
        states = [x["engines"]["reward"]["state"] for x in run.readiness]
        assert {"dead", "restarting"} & set(states), states
        assert all(x["engines"]["policy"]["state"] == "running" for x in run.readiness)
        final = srv.ready()
        assert final["ready"], final
        assert (final["engines"]["reward"]["restarts"], final["engines"]["policy"]["restarts"]) == (1, 0)
        # Best-of-N serves again: four candidates decoded and scored, one chosen
        assert run.after is not None and run.after.status_code == 200, run.after and run.after.text
        body = run.after.json()
        assert body["usage"]["bonserve"]["candidates"] == 4
        assert isinstance(body["choices"][0]["reward"], float)
    finally:
        srv.stop()


def _samples(srv: RunningServer) -> dict[str, float]:
    """Every sample of /metrics as {'name{labels}': value}."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(srv.base_url + "/metrics", timeout=30).text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def _access_log(srv: RunningServer) -> list[dict[str, Any]]:
    """The server's access-log records (server/access_log.py: one JSON object a line)."""
    records: list[dict[str, Any]] = []
    for line in srv.log.read_text(errors="replace").splitlines():
        _, sep, rest = line.partition(" bonserve.access ")
        if sep:
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(rest))
    return records


def test_fuzz_with_reward_model_and_admin_api(
    default_model: Path, rm_registry: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """schemathesis over every operation of a server with a reward model, an API key and an
    admin key, each request carrying the key of its path (tests/server/fuzz_hooks.py) and
    every other generation request made Best-of-N: no 5xx; Best-of-N was served and every
    admin operation got past its key; afterwards the server still serves plain and BoN."""
    srv = start_bonserve(
        tmp_path_factory.mktemp("fuzz-rm"),
        *STRICT_FLAGS,
        *_with_reward_model(default_model, rm_registry),
        "--admin-key",
        ADMIN_KEY,
        "--max-best-of",
        "2",
    )
    try:
        spec = httpx.get(srv.base_url + "/openapi.json", timeout=30).json()
        admin_paths = sorted(p for p in spec["paths"] if p.startswith("/admin/"))
        assert len(admin_paths) >= 6, admin_paths
        env = {
            "FUZZ_MODEL": POLICY,
            "FUZZ_REWARD_MODEL": RM,
            "FUZZ_API_KEY": API_KEY,
            "FUZZ_ADMIN_KEY": ADMIN_KEY,
            "FUZZ_BEST_OF": "2",
        }
        run_schemathesis(srv, tmp_path, env, max_examples=40, seed=2, timeout_s=600)

        samples = _samples(srv)
        served_bon = sum(
            v
            for k, v in samples.items()
            if k.startswith("bonserve_requests_total{") and 'mode="bon"' in k and 'status="200"' in k
        )
        assert served_bon > 0, {k: v for k, v in samples.items() if k.startswith("bonserve_requests_total")}
        assert not [k for k in samples if k.startswith("bonserve_requests_total{") and 'status="5' in k]
        records = _access_log(srv)
        assert records, srv.log.read_text()[-3000:]
        assert not [r for r in records if r["status"] >= 500], [r for r in records if r["status"] >= 500]
        reached = {
            r["path"] for r in records if r["path"].startswith("/admin/") and r["status"] not in (401, 403)
        }
        assert reached >= set(admin_paths), sorted(set(admin_paths) - reached)

        # the server still serves, and still with its reward model
        headers = {"Authorization": f"Bearer {API_KEY}"}
        chat = {"model": POLICY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        r = httpx.post(srv.v1 + "/chat/completions", json=chat, headers=headers, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
        r = httpx.post(srv.v1 + "/chat/completions", json={**chat, "best_of": 2}, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["bonserve"]["candidates"] == 2
        assert isinstance(r.json()["choices"][0]["reward"], float)
        ready = srv.ready()
        assert ready["ready"] and {e["restarts"] for e in ready["engines"].values()} == {0}, ready
    finally:
        srv.stop()
