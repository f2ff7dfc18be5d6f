"""Promotion as desired state, without engines: the registry's _state/aliases.json (atomic,
serialised writers), promotions recorded before they switch, servers reconciling to it, and
start-up on the promoted checkpoint (a LoRA entry included). Engines are the named fakes of
tests/server/fakes.py; the real thing is tests/server/test_fleet_e2e.py."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.desired_state import (
    AliasRewardModel,
    DesiredState,
    DesiredStateError,
    format_desired,
    read_desired,
    set_alias,
    set_reward_model,
    state_path,
)
from core.registry import Manifest, Registry
from server.app import build_app, build_state
from server.config import Settings
from server.errors import APIError
from server.startup import plan_policy
from server.state import AppState
from tests.server.fakes import FakeEngineBuilder, FakeLoRAAsyncLLM

pytestmark = pytest.mark.timeout(60)

Serve = Callable[..., Awaitable[AppState]]


def full_entry(registry: Registry, name: str, kind: str = "base", base: str | None = None) -> None:
    with registry.write(Manifest(name=name, kind=kind, base_model=base or name)) as staging:
        (staging / "config.json").write_text("{}")
        (staging / "model.safetensors").write_bytes(b"\0" * 1024)


def lora_entry(registry: Registry, name: str, base: str = "base", rank: int = 8) -> None:
    manifest = Manifest(name=name, kind="sft", format="lora", base_model=base, parent=base)
    with registry.write(manifest) as staging:
        (staging / "adapter_config.json").write_text(json.dumps({"r": rank}))
        (staging / "adapter_model.safetensors").write_bytes(b"\0" * 64)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "registry")
    full_entry(reg, "base")
    full_entry(reg, "full-c", kind="sft", base="base")
    full_entry(reg, "rm-1", kind="rm", base="base")
    full_entry(reg, "rm-2", kind="rm", base="base")
    lora_entry(reg, "lora-a")
    lora_entry(reg, "lora-b")
    lora_entry(reg, "lora-r32", rank=32)
    lora_entry(reg, "lora-other", base="other-base")
    return reg


@pytest.fixture
async def serve(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Serve]:
    """`build_state` as `bonserve serve` runs it, on fake engines: start the engines, then the
    manager's start-up (adapter, first reconcile), as the app's lifespan does."""
    monkeypatch.setattr("server.app.EngineBuilder", FakeEngineBuilder)
    monkeypatch.setattr("server.model_manager.available_memory", lambda: 1 << 40)
    states: list[AppState] = []

    async def make(**overrides: Any) -> AppState:
        values: dict[str, Any] = {
            "registry": registry.root,
            "model": "base",
            "alias": "policy",
            "max_loras": 2,
            "reconcile_interval_s": 0,
            "open_admin": True,
        }
        settings = Settings(**{**values, **overrides})
        state = build_state(settings)
        states.append(state)
        assert not state.ready
        for engine in state.engines.values():
            await engine.start()
        assert state.manager is not None
        await state.manager.start()
        return state

    yield make
    for state in states:
        await asyncio.gather(*(e.stop() for e in state.engines.values()))


def aliases(state: AppState) -> dict[str, str]:
    return state.router.aliases()


def adapters(state: AppState) -> dict[int, str]:
    engine = state.engines["policy"].engine
    assert isinstance(engine, FakeLoRAAsyncLLM)
    return engine.adapters


def built(state: AppState) -> list[tuple[str, str, str]]:
    assert state.manager is not None
    builder = state.manager.builder
    assert isinstance(builder, FakeEngineBuilder)
    return builder.built


# --------------------------------------------------------------------------- the file


def test_nothing_promoted_reads_as_empty(registry: Registry) -> None:
    assert read_desired(registry.root) == DesiredState()
    assert "nothing promoted" in format_desired(registry.root)


def test_writes_are_whole_and_counted(registry: Registry) -> None:
    set_alias(registry.root, "policy", "lora-a", by="test")
    state = set_alias(registry.root, "policy", "lora-a", by="test")  # no change: no write
    assert state.revision == 1
    state = set_alias(registry.root, "policy", "lora-b", by="test")
    state = set_reward_model(registry.root, "rm-2", by="test")
    assert (state.revision, state.aliases, state.reward_model) == (3, {"policy": "lora-b"}, "rm-2")
    assert [(c.what, c.previous, c.to) for c in state.history] == [
        ("policy", None, "lora-a"),
        ("policy", "lora-a", "lora-b"),
        ("reward_model", None, "rm-2"),
    ]
    assert read_desired(registry.root) == state
    # Only the file and its lock: no temp file left behind, and no registry entry either.
    assert sorted(p.name for p in state_path(registry.root).parent.iterdir()) == [".lock", "aliases.json"]
    assert "_state" not in {e.name for e in registry.entries()} | set(registry.problems())
    text = format_desired(registry.root)
    assert "policy" in text and "lora-b" in text and "rm-2" in text


def test_concurrent_writers_lose_no_update(registry: Registry) -> None:
    threads = [
        threading.Thread(target=set_alias, args=(registry.root, f"alias-{i}", "lora-a")) for i in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = read_desired(registry.root)
    assert state.revision == 16 and set(state.aliases) == {f"alias-{i}" for i in range(16)}


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"version": 2, "aliases": {}}',
        '{"aliases": {"policy": "../../etc"}}',
        '{"aliases": {"-bad": "lora-a"}}',
        '{"aliases": ["policy"]}',
        '{"reward_model": 3}',
    ],
)
def test_malformed_files_are_refused(registry: Registry, content: str) -> None:
    path = state_path(registry.root)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(DesiredStateError):
        read_desired(registry.root)
    with pytest.raises(DesiredStateError):  # and never overwritten by a writer that cannot read it
        set_alias(registry.root, "policy", "lora-a")
    assert path.read_text() == content


def test_files_from_before_pairings_still_read_and_new_files_stay_readable(registry: Registry) -> None:
    """A file an older bonserve wrote (no pairings, history without reward models) reads as
    unpaired; a pairing is written with the alias in one revision, in a key older readers
    skip, under the same schema version."""
    path = state_path(registry.root)
    path.parent.mkdir(parents=True)
    old = {
        "version": 1,
        "aliases": {"policy": "lora-a"},
        "reward_model": "rm-1",
        "revision": 4,
        "updated_at": 1.0,
        "updated_by": "old:1",
        "history": [{"what": "policy", "to": "lora-a", "previous": None, "at": 1.0, "by": "old:1"}],
    }
    path.write_text(json.dumps(old))
    state = read_desired(registry.root)
    assert (state.aliases, state.alias_reward_models, state.revision) == ({"policy": "lora-a"}, {}, 4)
    assert state.history[0].reward_model is None

    state = set_alias(registry.root, "policy", "lora-b", reward_model="rm-2", forced=True)
    assert state.revision == 5 and state.alias_reward_models == {"policy": AliasRewardModel("rm-2", True)}
    assert (state.history[-1].to, state.history[-1].reward_model, state.history[-1].forced) == (
        "lora-b",
        "rm-2",
        True,
    )
    on_disk = json.loads(path.read_text())
    assert on_disk["version"] == 1 and on_disk["aliases"] == {"policy": "lora-b"}
    assert on_disk["alias_reward_models"] == {"policy": {"reward_model": "rm-2", "forced": True}}
    assert "rm-2, forced" in format_desired(registry.root)
    assert set_alias(registry.root, "policy", "lora-b", reward_model="rm-2", forced=True).revision == 5
    state = set_alias(registry.root, "policy", "lora-b")  # same target, pairing dropped: a change
    assert state.revision == 6 and state.alias_reward_models == {}


@pytest.mark.parametrize(
    "pairings",
    [
        [],
        {"other": {"reward_model": "rm-1"}},
        {"policy": {"reward_model": "../x"}},
        {"policy": {"reward_model": 3}},
        {"policy": {"reward_model": "rm-1", "forced": "yes"}},
        {"policy": {"model": "rm-1"}},
    ],
)
def test_malformed_pairings_are_refused(registry: Registry, pairings: Any) -> None:
    path = state_path(registry.root)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"aliases": {"policy": "lora-a"}, "alias_reward_models": pairings}))
    with pytest.raises(DesiredStateError):
        read_desired(registry.root)


def test_names_are_checked_before_writing(registry: Registry) -> None:
    with pytest.raises(DesiredStateError):
        set_alias(registry.root, "policy", "../escape")
    with pytest.raises(DesiredStateError):
        set_alias(registry.root, "bad alias", "lora-a")
    assert not state_path(registry.root).exists()


# --------------------------------------------------------------------------- servers


async def test_promotion_is_recorded_and_other_servers_follow(serve: Serve, registry: Registry) -> None:
    a, b = await serve(), await serve()
    assert a.ready and b.ready
    assert a.manager is not None and b.manager is not None
    result = await a.manager.promote("policy", "lora-a")
    assert (result.model, result.previous) == ("lora-a", "base")
    assert read_desired(registry.root).aliases == {"policy": "lora-a"}
    assert aliases(b) == {"policy": "base"}  # until it reconciles
    assert await b.manager.reconcile()
    assert aliases(b) == {"policy": "lora-a"} and list(adapters(b).values()) == ["lora-a"]
    assert await a.manager.reconcile()  # the promoting server is already in sync: no-op
    assert b.manager.reconcile_status["in_sync"] and b.manager.reconcile_status["revision"] == 1

    # A full checkpoint: B starts its engine, switches, then drops the adapter it no longer serves.
    await a.manager.promote("policy", "full-c")
    assert await b.manager.reconcile()
    assert aliases(b) == {"policy": "full-c"} and "policy:full-c" in b.engines
    assert adapters(b) == {}
    assert ("policy", "full-c", "full-c") in built(b)


async def test_admin_api_records_and_reports(serve: Serve, registry: Registry) -> None:
    state = await serve()
    app = build_app(state.settings, state)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/admin/aliases/promote", json={"alias": "policy", "model": "lora-b"})
        assert r.status_code == 200, r.text
        body = (await c.get("/admin/state")).json()
    assert read_desired(registry.root).aliases == {"policy": "lora-b"}
    assert body["aliases"] == {"policy": "lora-b"}
    assert body["reconcile"]["in_sync"] is True and body["startup_error"] is None


async def test_a_new_server_starts_on_the_promoted_checkpoint(serve: Serve, registry: Registry) -> None:
    set_alias(registry.root, "policy", "lora-a")
    # LoRA off in the settings: start-up turns it on for the adapter (one slot, rank cap 8).
    c = await serve(max_loras=0)
    assert c.ready and aliases(c) == {"policy": "lora-a"}
    assert built(c) == [("policy", "base", "base")]
    assert c.manager is not None and c.manager.builder.policy_options.max_loras == 1
    assert c.manager.builder.policy_options.max_lora_rank == 8
    assert c.manager.state()["started_from"].startswith("desired state")

    set_alias(registry.root, "policy", "full-c")
    d = await serve()
    assert built(d) == [("policy", "full-c", "full-c")]  # no engine for the old checkpoint
    assert aliases(d) == {"policy": "full-c"}
    # An adapter on the fleet's base still works there: its base gets an engine first.
    assert d.manager is not None
    await d.manager.promote("policy", "lora-b")
    assert ("policy", "base", "base") in built(d) and aliases(d) == {"policy": "lora-b"}
    assert list(d.engines["policy:base"].engine.adapters.values()) == ["lora-b"]


async def test_a_lora_entry_is_a_start_up_model(serve: Serve) -> None:
    state = await serve(model="lora-a", max_loras=0)
    assert state.ready and aliases(state) == {"policy": "lora-a"}
    assert built(state) == [("policy", "base", "base")]
    assert {m.name for m in state.router.all()} == {"base", "lora-a"}
    assert list(adapters(state).values()) == ["lora-a"]
    assert state.manager is not None
    await state.manager.promote("policy", "lora-b")  # the next adapter replaces it
    assert list(adapters(state).values()) == ["lora-b"]


def test_lora_start_up_checks(registry: Registry) -> None:
    capped = Settings(registry=registry.root, model="lora-r32", max_loras=1, max_lora_rank=16)
    with pytest.raises(SystemExit, match="rank"):
        plan_policy(capped, DesiredState())
    with pytest.raises(SystemExit, match="other-base"):
        plan_policy(Settings(registry=registry.root, model="lora-other"), DesiredState())
    with pytest.raises(SystemExit, match="reward model"):
        plan_policy(Settings(registry=registry.root, model="rm-1"), DesiredState())
    # A desired target that cannot serve as this fleet's policy: --model, and the server starts.
    settings = Settings(registry=registry.root, model="base", alias="policy")
    for target in ("lora-other", "no-such-entry", "rm-1"):
        plan = plan_policy(settings, DesiredState(aliases={"policy": target}))
        assert (plan.weights, plan.lora, plan.source) == ("base", None, "--model")
    no_alias = Settings(registry=registry.root, model="base")  # without --alias nothing to follow
    assert plan_policy(no_alias, DesiredState(aliases={"policy": "lora-a"})).lora is None


async def test_reconcile_failures_back_off_and_recover(serve: Serve, registry: Registry) -> None:
    state = await serve()
    assert state.manager is not None
    set_alias(registry.root, "policy", "lora-other")  # not on this server's base
    assert not await state.manager.reconcile()
    errors = state.manager.reconcile_status["errors"]
    assert errors["policy"]["target"] == "lora-other" and errors["policy"]["attempts"] == 1
    assert not await state.manager.reconcile()
    assert errors["policy"]["attempts"] == 1  # backing off: not retried at once
    assert aliases(state) == {"policy": "base"}  # still serving
    set_alias(registry.root, "policy", "lora-a")
    assert await state.manager.reconcile()
    assert aliases(state) == {"policy": "lora-a"} and state.manager.reconcile_status["errors"] == {}


async def test_an_unrecorded_promotion_switches_nothing(serve: Serve, registry: Registry) -> None:
    state = await serve()
    assert state.manager is not None
    (registry.root / "_state").write_text("not a directory")
    with pytest.raises(APIError) as info:
        await state.manager.promote("policy", "lora-a")
    assert (info.value.status, info.value.code) == (503, "state_not_recorded")
    assert aliases(state) == {"policy": "base"}


async def test_reconcile_does_not_undo_a_newer_promotion(serve: Serve, registry: Registry) -> None:
    """A pass that read an older state, then waited for the lock, applies the newest one."""
    state = await serve()
    manager = state.manager
    assert manager is not None
    set_alias(registry.root, "policy", "lora-a")
    async with manager._lock:
        task = asyncio.create_task(manager.reconcile())
        await asyncio.sleep(0.5)  # it has read "lora-a" and waits for the lock
        set_alias(registry.root, "policy", "lora-b")
    assert await task
    assert aliases(state) == {"policy": "lora-b"}


async def test_reward_model_choice_is_recorded_and_followed(serve: Serve, registry: Registry) -> None:
    a, b = await serve(reward_model="rm-1"), await serve(reward_model="rm-1")
    plain = await serve()  # no reward engine: the choice does not concern it
    assert a.manager is not None and b.manager is not None and plain.manager is not None
    await a.manager.promote_reward("rm-2")
    assert read_desired(registry.root).reward_model == "rm-2"
    old = b.engines["reward"]
    assert await b.manager.reconcile()
    assert b.reward is not None and b.reward.name == "rm-2"
    assert b.engines["reward"] is not old and not old.ready  # the old engine was freed
    assert await plain.manager.reconcile() and plain.reward is None
    c = await serve(reward_model="rm-1")
    assert ("reward", "rm-2", "rm-2") in built(c) and ("reward", "rm-1", "rm-1") not in built(c)


def test_cli_shows_the_record(registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    from bonserve.cli import main

    assert main(["registry", "aliases", "--registry", str(registry.root)]) == 0
    assert "nothing promoted" in capsys.readouterr().out
    set_alias(registry.root, "policy", "lora-a", by="ci")
    assert main(["registry", "aliases", "--registry", str(registry.root)]) == 0
    out = capsys.readouterr().out
    assert "revision 1" in out and "policy" in out and "lora-a" in out and "(ci)" in out
    state_path(registry.root).write_text("{broken")
    assert main(["registry", "aliases", "--registry", str(registry.root)]) == 1
