"""Promotion as desired state across real servers: two `bonserve serve` processes share one
registry; a promotion sent to one reaches both within a bounded time (each reconciles to the
registry's _state/aliases.json) while a client loop on the other sees no failed request; a
server started afterwards starts on the promoted checkpoint (a LoRA entry, served on its base).

Engine time is kept small: eager engines, a short context, a small KV cache, and LoRA
promotions only (milliseconds each, no new engine)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.desired_state import read_desired
from core.registry import DEFAULT_MODEL_NAME, Registry
from loadtests.servers import ServerProcess, start_bonserve
from tests.synthetic import copy_full_entry, make_lora_entry

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

ADMIN = {"Authorization": "Bearer admin-key"}
BASE = DEFAULT_MODEL_NAME
PROMPT = [{"role": "user", "content": "Name a colour."}]
CONVERGE_S = 30  # reconcile every 1 s; a LoRA promotion takes milliseconds
# Two engines on a shared CPU: no pinning to the same cores, one OpenMP thread each.
ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}


def flags(registry: Registry, *extra: str) -> list[str]:
    return [
        "--registry",
        str(registry.root),
        "--model",
        BASE,
        "--alias",
        "policy",
        "--admin-key",
        "admin-key",
        "--enforce-eager",
        "--max-model-len",
        "512",
        "--kv-cache-gib",
        "0.25",
        "--reconcile-interval-s",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def registry(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    reg = Registry(tmp_path_factory.mktemp("fleet-registry"))
    base = Registry(default_model.parent).load(BASE)
    copy_full_entry(reg, base, BASE, kind="base")
    base = reg.load(BASE)
    make_lora_entry(reg, base, "lora-a", rank=8, seed=1)
    make_lora_entry(reg, base, "lora-b", rank=8, seed=2)
    return reg


@pytest.fixture(scope="module")
def fleet(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    logs = tmp_path_factory.mktemp("fleet")
    servers: list[ServerProcess] = []
    try:
        for _ in range(2):
            servers.append(start_bonserve(logs, *flags(registry, "--max-loras", "2"), env=ENV))
        yield servers
    finally:
        for srv in servers:
            srv.stop()


async def served_model(c: httpx.AsyncClient, srv: ServerProcess) -> str:
    body = {"model": "policy", "messages": PROMPT, "max_tokens": 1}
    r = await c.post(srv.v1 + "/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["model"])


def test_a_promotion_through_one_server_reaches_both(fleet: list[ServerProcess], registry: Registry) -> None:
    promoter, follower = fleet
    failures: list[str] = []
    seen: list[str] = []
    stop = asyncio.Event()

    async def client_loop(c: httpx.AsyncClient, stream: bool) -> None:
        body = {"model": "policy", "messages": PROMPT, "max_tokens": 6, "stream": stream}
        while not stop.is_set():
            try:
                async with c.stream("POST", follower.v1 + "/chat/completions", json=body) as r:
                    text = (await r.aread()).decode()
                if r.status_code != 200 or '"error"' in text:
                    failures.append(f"{r.status_code} {text[:300]}")
                    continue
                if stream:
                    chunks = [json.loads(ln[6:]) for ln in text.splitlines() if ln.startswith("data: {")]
                    names = {ch["model"] for ch in chunks}
                    if len(names) != 1:
                        failures.append(f"one stream, several models: {names}")
                    seen.extend(names)
                else:
                    seen.append(json.loads(text)["model"])
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

    async def run() -> dict[str, float]:
        took: dict[str, float] = {}
        async with httpx.AsyncClient(timeout=120) as c, httpx.AsyncClient(timeout=300, headers=ADMIN) as a:
            assert {await served_model(c, s) for s in fleet} == {BASE}
            clients = [asyncio.create_task(client_loop(c, stream)) for stream in (False, True)]
            await asyncio.sleep(2)
            for target in ("lora-a", "lora-b"):
                t0 = time.monotonic()
                r = await a.post(
                    promoter.base_url + "/admin/aliases/promote", json={"alias": "policy", "model": target}
                )
                assert r.status_code == 200, r.text
                assert await served_model(c, promoter) == target  # the promoter switched at once
                while await served_model(c, follower) != target:
                    assert time.monotonic() - t0 < CONVERGE_S, f"{follower.base_url} still not on {target}"
                    await asyncio.sleep(0.2)
                took[target] = time.monotonic() - t0
                await asyncio.sleep(2)  # the loop keeps going on the new target
            stop.set()
            await asyncio.gather(*clients)
        return took

    took = asyncio.run(run())
    assert not failures, failures[:5]
    assert {"lora-a", "lora-b"} <= set(seen) <= {BASE, "lora-a", "lora-b"}, set(seen)
    assert all(t < CONVERGE_S for t in took.values()), took
    desired = read_desired(registry.root)
    assert desired.aliases == {"policy": "lora-b"} and desired.revision == 2
    for srv in fleet:
        state = httpx.get(srv.base_url + "/admin/state", headers=ADMIN, timeout=30).json()
        assert state["aliases"] == {"policy": "lora-b"}
        assert state["reconcile"]["in_sync"] is True and state["reconcile"]["revision"] == 2
        # The adapter promoted away from was drained and unloaded everywhere.
        assert {m["name"] for m in state["models"]} == {BASE, "lora-b"}, state["models"]
    metrics = httpx.get(follower.base_url + "/metrics", timeout=30).text
    assert "bonserve_desired_state_in_sync 1.0" in metrics


def test_a_server_started_later_starts_on_the_promoted_checkpoint(
    fleet: list[ServerProcess], registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Runs after the promotions above. Started with the fleet's --model and no --max-loras:
    the desired target is a LoRA entry, so it serves that entry's base with LoRA on."""
    assert read_desired(registry.root).aliases == {"policy": "lora-b"}
    late = start_bonserve(tmp_path_factory.mktemp("late"), *flags(registry), env=ENV)
    try:
        body = {"model": "policy", "messages": PROMPT, "max_tokens": 12, "temperature": 0}
        first = httpx.post(late.v1 + "/chat/completions", json=body, timeout=120)
        assert first.status_code == 200 and first.json()["model"] == "lora-b", first.text
        state = httpx.get(late.base_url + "/admin/state", headers=ADMIN, timeout=30).json()
        assert state["started_from"] == "desired state (policy -> lora-b)"
        assert {m["name"]: m["format"] for m in state["models"]} == {BASE: "full", "lora-b": "lora"}
        assert state["reconcile"]["in_sync"] is True
        # And it follows the next promotion like the others, through the adapter slot start-up made.
        r = httpx.post(
            fleet[0].base_url + "/admin/aliases/promote",
            json={"alias": "policy", "model": "lora-a"},
            headers=ADMIN,
            timeout=300,
        )
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + CONVERGE_S
        while httpx.post(late.v1 + "/chat/completions", json=body, timeout=120).json()["model"] != "lora-a":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        late.stop()
