"""Hot-swap against a real server: LoRA and full checkpoints promoted under streaming load,
admin auth, path traversal and corrupt entries. Zero failed requests; every response names
the checkpoint that produced it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.registry import DEFAULT_MODEL_NAME, Registry
from loadtests.servers import ServerProcess, start_bonserve
from tests.synthetic import copy_full_entry, corrupt_manifest, make_full_entry, make_lora_entry

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

ADMIN = {"Authorization": "Bearer admin-key"}
BASE = DEFAULT_MODEL_NAME
PROMPT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def registry(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    reg = Registry(tmp_path_factory.mktemp("swap-registry"))
    base = Registry(default_model.parent).load(BASE)
    copy_full_entry(reg, base, BASE, kind="base")
    base = reg.load(BASE)
    make_lora_entry(reg, base, "lora-a", rank=8, seed=1)
    make_full_entry(reg, base, "full-b", seed=3)  # weights differ: the swap must show in outputs
    make_full_entry(reg, base, "full-c", seed=5)  # same layout as full-b: promoted in place
    make_lora_entry(reg, base, "lora-rank4", rank=4)
    make_lora_entry(reg, base, "lora-mts", rank=8, modules_to_save=["lm_head"])
    make_lora_entry(reg, base, "lora-missing", rank=8)
    (reg.path_of("lora-missing") / "adapter_model.safetensors").unlink()
    copy_full_entry(reg, base, "full-corrupt")
    corrupt_manifest(reg, "full-corrupt")
    make_lora_entry(reg, base, "lora-otherbase", rank=8)
    m = reg.path_of("lora-otherbase") / "manifest.json"
    m.write_text(m.read_text().replace(f'"base_model": "{BASE}"', '"base_model": "other-base"'))
    (reg.root / "half-written").mkdir()
    return reg


@pytest.fixture(scope="module")
def swap_server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_bonserve(
        tmp_path_factory.mktemp("swap"),
        "--registry",
        str(registry.root),
        "--model",
        BASE,
        "--alias",
        "policy",
        "--max-loras",
        "2",
        "--admin-key",
        "admin-key",
        "--enforce-eager",
    )
    yield srv
    srv.stop()


def admin(srv: ServerProcess, method: str, path: str, **kw: object) -> httpx.Response:
    return httpx.request(method, srv.base_url + path, headers=ADMIN, timeout=300, **kw)


def chat(srv: ServerProcess, model: str, **kw: object) -> httpx.Response:
    body = {"model": model, "messages": PROMPT, "max_tokens": 8, "temperature": 0, **kw}
    return httpx.post(srv.v1 + "/chat/completions", json=body, timeout=120)


def test_admin_routes_require_the_admin_key(swap_server: ServerProcess) -> None:
    routes = [
        ("GET", "/admin/state", None),
        ("GET", "/admin/registry", None),
        ("POST", "/admin/models/load", {"model": "lora-a"}),
        ("POST", "/admin/models/unload", {"model": "lora-a"}),
        ("POST", "/admin/aliases/promote", {"alias": "policy", "model": "lora-a"}),
        ("POST", "/admin/reward/promote", {"model": "x"}),
    ]
    for method, path, body in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.request(method, swap_server.base_url + path, json=body, headers=headers)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
    assert admin(swap_server, "GET", "/admin/state").status_code == 200


def test_registry_listing_and_models(swap_server: ServerProcess) -> None:
    listing = admin(swap_server, "GET", "/admin/registry").json()
    names = {e["name"] for e in listing["entries"]}
    assert {"lora-a", "full-b", BASE} <= names
    assert {"full-corrupt", "lora-missing", "half-written"} <= set(listing["problems"])
    models = {m["id"]: m for m in httpx.get(swap_server.v1 + "/models").json()["data"]}
    assert models["policy"]["kind"] == "alias" and models["policy"]["parent"] == BASE
    assert models[BASE]["kind"] == "base"


@pytest.mark.parametrize(
    "name,status,code",
    [
        ("../../etc/passwd", 422, "invalid_checkpoint"),
        ("no-such-entry", 404, "model_not_found"),
        ("half-written", 422, "invalid_checkpoint"),
        ("full-corrupt", 422, "invalid_checkpoint"),
        ("lora-missing", 422, "invalid_checkpoint"),
        ("lora-rank4", 422, "unsupported_lora_rank"),
        ("lora-mts", 422, "invalid_checkpoint"),
        ("lora-otherbase", 422, "wrong_base"),
    ],
)
def test_bad_entries_are_refused_and_serving_goes_on(
    swap_server: ServerProcess, name: str, status: int, code: str
) -> None:
    for path, body in (
        ("/admin/models/load", {"model": name}),
        ("/admin/aliases/promote", {"alias": "policy", "model": name}),
    ):
        r = admin(swap_server, "POST", path, json=body)
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code
    ok = chat(swap_server, "policy")
    assert ok.status_code == 200 and ok.json()["model"] == BASE


def test_lora_changes_outputs(swap_server: ServerProcess) -> None:
    r = admin(swap_server, "POST", "/admin/models/load", json={"model": "lora-a"})
    assert r.status_code == 200, r.text
    assert r.json() == {"loaded": "lora-a", "kind": "sft", "format": "lora"}
    base = chat(swap_server, BASE, max_tokens=16).json()
    tuned = chat(swap_server, "lora-a", max_tokens=16).json()
    assert tuned["model"] == "lora-a"
    assert tuned["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]


def test_promotions_under_streaming_load_fail_nothing(swap_server: ServerProcess) -> None:
    """Streaming clients hammer `policy` while it is promoted to a LoRA, then to a full
    checkpoint (new engine), then to another full checkpoint (loaded into that engine in
    place), then back to the base."""
    seen: list[str] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def client_loop(c: httpx.AsyncClient) -> None:
        body = {"model": "policy", "messages": PROMPT, "max_tokens": 12, "stream": True}
        while not stop.is_set():
            try:
                async with c.stream("POST", swap_server.v1 + "/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {await r.aread()!r}")
                        continue
                    models = {
                        line for line in [ln async for ln in r.aiter_lines()] if line.startswith("data: {")
                    }
                    names = {line.split('"model":"')[1].split('"')[0] for line in models}
                    if len(names) != 1 or any('"error"' in line for line in models):
                        failures.append(f"stream {names}")
                    seen.extend(names)
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

    greedy: dict[str, str] = {}

    async def run() -> list[dict]:
        results = []
        async with httpx.AsyncClient(timeout=120) as c, httpx.AsyncClient(timeout=600, headers=ADMIN) as a:
            clients = [asyncio.create_task(client_loop(c)) for _ in range(3)]
            await asyncio.sleep(2)
            for target in ("lora-a", "full-b", "full-c", BASE):
                r = await a.post(
                    swap_server.base_url + "/admin/aliases/promote", json={"alias": "policy", "model": target}
                )
                assert r.status_code == 200, r.text
                results.append(r.json())
                deadline = time.monotonic() + 60
                while (
                    await c.post(
                        swap_server.v1 + "/chat/completions",
                        json={"model": "policy", "messages": PROMPT, "max_tokens": 1},
                    )
                ).json()["model"] != target:
                    assert time.monotonic() < deadline
                r = await c.post(
                    swap_server.v1 + "/chat/completions",
                    json={"model": "policy", "messages": PROMPT, "max_tokens": 12, "temperature": 0},
                )
                greedy[r.json()["model"]] = r.json()["choices"][0]["message"]["content"]
                await asyncio.sleep(2)
            stop.set()
            await asyncio.gather(*clients)
        return results

    results = asyncio.run(run())
    assert not failures, failures[:5]
    names = {BASE, "lora-a", "full-b", "full-c"}
    assert set(seen) == names
    assert [r["previous"] for r in results] == [BASE, "lora-a", "full-b", "full-c"]
    assert results[0]["method"] in ("lora", "switch")  # "switch" once test_lora_changes_outputs loaded it
    assert [r["method"] for r in results[1:]] == ["new_engine", "in_place", "switch"]
    assert results[2]["unloaded"] == "full-b"  # its engine now runs full-c
    assert results[3]["unloaded"] == "full-c"  # the full engine was drained and freed
    assert set(greedy) == names
    assert greedy["full-b"] != greedy[BASE], greedy  # the new engine serves other weights
    assert greedy["full-c"] != greedy["full-b"], greedy  # and the in-place load changed them
    state = admin(swap_server, "GET", "/admin/state").json()
    assert not {"policy:full-b", "policy:full-c"} & set(state["engines"])
    assert state["aliases"] == {"policy": BASE}
    # The weights loaded in place answer as the same checkpoint started in an engine of its own.
    r = admin(swap_server, "POST", "/admin/models/load", json={"model": "full-c"})
    assert r.status_code == 200, r.text
    fresh = chat(swap_server, "full-c", max_tokens=12).json()
    assert fresh["choices"][0]["message"]["content"] == greedy["full-c"]
    assert admin(swap_server, "POST", "/admin/models/unload", json={"model": "full-c"}).status_code == 200


def test_unload_rules(swap_server: ServerProcess) -> None:
    r = admin(swap_server, "POST", "/admin/models/unload", json={"model": BASE})
    assert r.status_code == 409  # the alias points at it / startup policy
    r = admin(swap_server, "POST", "/admin/reward/promote", json={"model": "full-b"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_reward_model"
    metrics = httpx.get(swap_server.base_url + "/metrics").text
    assert 'bonserve_swaps_total{role="policy"}' in metrics
