"""--standby-engine against a real server: the spare engine starts after /ready, takes the
first full promotion under streaming load (its weights loaded in place, nothing fails), then a
new spare starts; the promoted checkpoint answers as transformers computes it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.registry import DEFAULT_MODEL_NAME, Registry
from loadtests.servers import ServerProcess, start_bonserve
from tests.reference import transformers_greedy
from tests.synthetic import copy_full_entry, make_full_entry

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

ADMIN = {"Authorization": "Bearer admin-key"}
BASE = DEFAULT_MODEL_NAME
PROMPT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def registry(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    reg = Registry(tmp_path_factory.mktemp("standby-registry"))
    copy_full_entry(reg, Registry(default_model.parent).load(BASE), BASE, kind="base")
    make_full_entry(reg, reg.load(BASE), "full-b", seed=3)
    return reg


@pytest.fixture(scope="module")
def standby_server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_bonserve(
        tmp_path_factory.mktemp("standby"),
        "--registry",
        str(registry.root),
        "--model",
        BASE,
        "--alias",
        "policy",
        "--admin-key",
        "admin-key",
        "--enforce-eager",
        "--standby-engine",
    )
    yield srv
    srv.stop()


def standby_state(srv: ServerProcess) -> str:
    body = httpx.get(srv.base_url + "/ready", timeout=30).json()
    assert "standby" not in body["engines"]  # never part of readiness
    return str(body["standby_engine"]["state"])


def wait_for_standby(srv: ServerProcess, timeout_s: float = 400) -> None:
    deadline = time.monotonic() + timeout_s
    while standby_state(srv) != "running":
        assert time.monotonic() < deadline, "the standby engine did not start"
        time.sleep(1)


def test_the_first_full_promotion_loads_into_the_standby_engine(
    standby_server: ServerProcess, registry: Registry
) -> None:
    wait_for_standby(standby_server)
    failures: list[str] = []
    seen: list[str] = []
    stop = asyncio.Event()

    async def client_loop(c: httpx.AsyncClient) -> None:
        body = {"model": "policy", "messages": PROMPT, "max_tokens": 12}
        while not stop.is_set():
            try:
                r = await c.post(standby_server.v1 + "/chat/completions", json=body)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                else:
                    seen.append(r.json()["model"])
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

    async def run() -> dict:
        async with httpx.AsyncClient(timeout=120) as c, httpx.AsyncClient(timeout=600, headers=ADMIN) as a:
            clients = [asyncio.create_task(client_loop(c)) for _ in range(2)]
            await asyncio.sleep(2)
            promote = {"alias": "policy", "model": "full-b"}
            r = await a.post(standby_server.base_url + "/admin/aliases/promote", json=promote)
            await asyncio.sleep(2)
            stop.set()
            await asyncio.gather(*clients)
            assert r.status_code == 200, r.text
            return dict(r.json())

    result = asyncio.run(run())
    assert not failures, failures[:5]
    assert result["method"] == "standby" and result["previous"] == BASE, result
    assert {BASE, "full-b"} <= set(seen)
    engines = httpx.get(standby_server.base_url + "/ready").json()["engines"]
    assert set(engines) == {"policy", "policy:full-b"}
    r = httpx.post(
        standby_server.v1 + "/chat/completions",
        json={"model": "policy", "messages": PROMPT, "max_tokens": 12, "temperature": 0},
        timeout=120,
    )
    assert r.json()["model"] == "full-b"
    served = r.json()["choices"][0]["message"]["content"]
    assert served == transformers_greedy(registry.path_of("full-b"), PROMPT, 12)
    assert served != transformers_greedy(registry.path_of(BASE), PROMPT, 12)  # other weights
    wait_for_standby(standby_server)  # a new spare, on the start-up weights again
