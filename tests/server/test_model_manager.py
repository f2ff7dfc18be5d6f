"""ModelManager checks that need no engine: memory refusal, kinds, router atomicity,
in-place weight loads and the standby engine (on fake engines)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core.registry import Manifest, Registry
from server.config import Settings
from server.engine_config import EngineBuilder
from server.engines import ManagedEngine
from server.errors import APIError
from server.model_manager import ModelManager
from server.models import ModelRouter, ServedModel
from tests.server.fakes import FakeAsyncLLM, FakeEngineBuilder


def make_manager(tmp_path: Path) -> tuple[ModelManager, Registry]:
    registry = Registry(tmp_path)
    for name, kind in (("big-full", "sft"), ("an-rm", "rm")):
        with registry.write(Manifest(name=name, kind=kind, base_model="base")) as staging:
            (staging / "model.safetensors").write_bytes(b"\0" * 4096)
            (staging / "config.json").write_text("{}")
    settings = Settings(registry=tmp_path)
    policy = ManagedEngine("policy", FakeAsyncLLM)
    router = ModelRouter()
    router.add(ServedModel(name="base", engine=policy))
    manager = ModelManager(
        settings, router, {"policy": policy}, EngineBuilder(settings), policy_base="base", reward=None
    )
    return manager, registry


async def test_full_checkpoint_refused_when_memory_is_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager, _ = make_manager(tmp_path)
    monkeypatch.setattr("server.model_manager.available_memory", lambda: 1 << 20)
    with pytest.raises(APIError) as info:
        await manager.load("big-full")
    assert info.value.status == 409 and info.value.code == "insufficient_memory"
    assert "GiB" in info.value.message
    assert [m.name for m in manager.router.all()] == ["base"]  # nothing changed


async def test_reward_entries_are_not_policies(tmp_path: Path) -> None:
    manager, _ = make_manager(tmp_path)
    with pytest.raises(APIError) as info:
        await manager.promote("policy", "an-rm")
    assert info.value.code == "wrong_kind"
    assert manager.router.aliases() == {}


def test_alias_and_checkpoint_names_cannot_collide() -> None:
    router = ModelRouter()
    engine = ManagedEngine("policy", FakeAsyncLLM)
    router.add(ServedModel(name="a", engine=engine))
    router.add(ServedModel(name="b", engine=engine))
    assert router.set_alias("policy", "a") is None
    assert router.set_alias("policy", "b") == "a"
    assert router.resolve("policy").name == "b"
    with pytest.raises(APIError):
        router.set_alias("a", "b")  # "a" is a checkpoint
    with pytest.raises(APIError):
        router.add(ServedModel(name="policy", engine=engine))
    with pytest.raises(APIError) as info:
        router.remove("b")  # the alias points at it
    assert info.value.code == "model_in_use"


# --------------------------------------------------------------------------- in-place swaps


@dataclass
class FakeReloadingLLM(FakeAsyncLLM):
    """A fake policy engine that takes vLLM's `reload_weights` RPC: it records each load, and
    answers with the loaded directory's name from then on (its 'weights')."""

    loads: list[str] = field(default_factory=list)
    prefix_resets: int = 0
    fail_reload: bool = False

    async def collective_rpc(
        self,
        method: str,
        timeout: float | None = None,  # noqa: ASYNC109 (vLLM's signature)
        args: tuple = (),
        kwargs: dict | None = None,
    ) -> list[None]:
        assert method == "reload_weights" and kwargs is not None
        await asyncio.sleep(0.05)
        if self.fail_reload:
            raise RuntimeError("truncated shard")
        self.loads.append(kwargs["weights_path"])
        self.reply = Path(kwargs["weights_path"]).name
        return [None]

    async def reset_prefix_cache(self) -> bool:
        self.prefix_resets += 1
        return True


@dataclass
class ReloadingBuilder(FakeEngineBuilder):
    """FakeEngineBuilder whose policy engines are FakeReloadingLLM, built answering as their
    checkpoint; `fail_reload` is handed to each."""

    fail_reload: bool = False
    build_delay_s: float = 0.0  # how long each engine takes to build (in the start thread)
    instances: list[FakeReloadingLLM] = field(default_factory=list)

    def policy(self, path: Any, name: str, metrics_name: str | None = None) -> Any:
        self.built.append(("policy", path.name, name))

        def build() -> FakeReloadingLLM:
            time.sleep(self.build_delay_s)
            engine = FakeReloadingLLM(reply=path.name, fail_reload=self.fail_reload)
            self.instances.append(engine)
            return engine

        return build


def in_place_manager(tmp_path: Path, **settings: Any) -> tuple[ModelManager, ReloadingBuilder]:
    registry = Registry(tmp_path)
    for name, config in (("full-b", "{}"), ("full-c", "{}"), ("full-other", '{"hidden_size": 64}')):
        with registry.write(Manifest(name=name, kind="sft", base_model="base", parent="base")) as staging:
            (staging / "model.safetensors").write_bytes(b"\0" * 4096)
            (staging / "config.json").write_text(config)
    values = Settings(registry=tmp_path, **settings)
    builder = ReloadingBuilder(values)
    policy = ManagedEngine("policy", FakeAsyncLLM)
    router = ModelRouter()
    router.add(ServedModel(name="base", engine=policy))
    router.set_alias("policy", "base")
    manager = ModelManager(values, router, {"policy": policy}, builder, policy_base="base", reward=None)  # type: ignore[arg-type]
    return manager, builder


async def test_full_to_full_promotion_loads_the_weights_in_place(tmp_path: Path) -> None:
    manager, builder = in_place_manager(tmp_path)
    await manager.engines["policy"].start()
    first = await manager.promote("policy", "full-b")
    assert first.method == "new_engine" and first.previous == "base" and first.unloaded is None
    previous = manager.router.resolve("full-b")
    engine = previous.engine.engine
    with previous.hold():  # a request still decoding on full-b
        task = asyncio.create_task(manager.promote("policy", "full-c"))
        await asyncio.sleep(0.2)
        waiting = manager.router.resolve("policy")
        assert waiting.name == "full-c" and not waiting.weights_loaded.is_set()
        assert engine.loads == []  # nothing loads while full-b still answers
    result = await task
    assert (result.method, result.previous, result.unloaded) == ("in_place", "full-b", "full-b")
    assert engine.loads == [str(tmp_path / "full-c")] and engine.prefix_resets == 1
    assert [e.reply for e in builder.instances] == ["full-c"]  # one engine built, now running full-c
    served = manager.router.resolve("policy")
    assert served.name == "full-c" and served.engine is previous.engine and served.weights_loaded.is_set()
    assert not manager.router.is_known("full-b")
    assert "policy:full-c" in manager.engines and "policy:full-b" not in manager.engines
    assert served.engine.name == "policy:full-c"
    await asyncio.gather(*(e.stop() for e in manager.engines.values()))


async def test_in_place_needs_the_same_layout_and_can_be_turned_off(tmp_path: Path) -> None:
    manager, _ = in_place_manager(tmp_path)
    await manager.engines["policy"].start()
    await manager.promote("policy", "full-b")
    other = await manager.promote("policy", "full-other")  # another config.json: own engine
    assert other.method == "new_engine" and other.unloaded == "full-b"
    await asyncio.gather(*(e.stop() for e in manager.engines.values()))

    manager, _ = in_place_manager(tmp_path / "off", swap_in_place=False)
    await manager.engines["policy"].start()
    await manager.promote("policy", "full-b")
    assert (await manager.promote("policy", "full-c")).method == "new_engine"
    await asyncio.gather(*(e.stop() for e in manager.engines.values()))


async def test_the_start_up_engine_is_never_loaded_in_place(tmp_path: Path) -> None:
    manager, _ = in_place_manager(tmp_path)
    await manager.engines["policy"].start()
    result = await manager.promote("policy", "full-b")  # from the start-up policy: a new engine
    assert result.method == "new_engine"
    assert manager.router.resolve("base").engine is manager.engines["policy"]
    await asyncio.gather(*(e.stop() for e in manager.engines.values()))


async def test_a_failed_in_place_load_restarts_the_engine_on_the_new_checkpoint(tmp_path: Path) -> None:
    manager, builder = in_place_manager(tmp_path, engine_restart_backoff_s=0)
    builder.fail_reload = True
    await manager.engines["policy"].start()
    await manager.promote("policy", "full-b")
    result = await manager.promote("policy", "full-c")
    assert result.method == "in_place"
    served = manager.router.resolve("policy")
    assert served.weights_loaded.is_set()
    assert [e.reply for e in builder.instances] == ["full-b", "full-c"]  # rebuilt from full-c
    assert served.engine.engine.reply == "full-c" and served.engine.restarts == 1
    await asyncio.gather(*(e.stop() for e in manager.engines.values()))


# --------------------------------------------------------------------------- standby engine


def standby_manager(
    tmp_path: Path, build_delay_s: float = 0.0, **settings: Any
) -> tuple[ModelManager, ReloadingBuilder]:
    """in_place_manager plus a registry entry for the start-up weights ('base', the same
    layout as full-b and full-c), with --standby-engine on."""
    registry = Registry(tmp_path)
    with registry.write(Manifest(name="base", kind="base")) as staging:
        (staging / "model.safetensors").write_bytes(b"\0" * 4096)
        (staging / "config.json").write_text("{}")
    manager, builder = in_place_manager(tmp_path, standby_engine=True, **settings)
    builder.build_delay_s = build_delay_s
    return manager, builder


async def started(manager: ModelManager) -> None:
    await manager.engines["policy"].start()
    await manager.start()


async def test_the_standby_engine_takes_the_first_full_promotion_in_place(tmp_path: Path) -> None:
    manager, builder = standby_manager(tmp_path)
    await started(manager)
    assert manager._standby_task is not None
    await manager._standby_task
    assert manager.standby_status()["state"] == "running"  # type: ignore[index]
    assert set(manager.engines) == {"policy"}  # /ready does not wait for (or list) the spare
    spare = builder.instances[0]
    assert spare.reply == "base"  # started on the start-up weights

    result = await manager.promote("policy", "full-b")
    assert (result.method, result.previous, result.unloaded) == ("standby", "base", None)
    served = manager.router.resolve("policy")
    assert served.engine.engine is spare and spare.loads == [str(tmp_path / "full-b")]
    assert spare.prefix_resets == 1 and served.engine.name == "policy:full-b"
    assert set(manager.engines) == {"policy", "policy:full-b"}
    assert manager.router.resolve("base").engine is manager.engines["policy"]  # still served

    await manager._standby_task  # the next spare, started after the first was taken
    assert len(builder.instances) == 2 and builder.instances[1].reply == "base"
    assert manager.standby_status()["state"] == "running"  # type: ignore[index]

    later = await manager.promote("policy", "full-c")  # full to full: in place, spare untouched
    assert later.method == "in_place" and builder.instances[1].loads == []
    await manager.close()
    assert builder.instances[1].errored  # the spare was shut down
    assert manager.standby_status() == {"state": "none"}
    await asyncio.gather(*(e.stop() for e in manager.engines.values()))


async def test_a_different_layout_does_not_use_the_standby_engine(tmp_path: Path) -> None:
    manager, builder = standby_manager(tmp_path)
    await started(manager)
    assert manager._standby_task is not None
    await manager._standby_task
    result = await manager.promote("policy", "full-other")  # another config.json
    assert result.method == "new_engine"
    assert builder.instances[0].loads == [] and manager.standby_status()["state"] == "running"  # type: ignore[index]
    await manager.close()
    await asyncio.gather(*(e.stop() for e in manager.engines.values()))


async def test_a_promotion_waits_for_a_standby_engine_still_starting(tmp_path: Path) -> None:
    manager, builder = standby_manager(tmp_path, build_delay_s=0.5)
    await started(manager)
    result = await manager.promote("policy", "full-b")  # the spare is still being built
    assert result.method == "standby"
    assert builder.instances[0].loads == [str(tmp_path / "full-b")]
    await manager.close()  # waits for the refill, then stops it
    assert len(builder.instances) == 2 and builder.instances[1].errored
    await asyncio.gather(*(e.stop() for e in manager.engines.values()))


async def test_a_failed_standby_load_restarts_it_on_the_new_checkpoint(tmp_path: Path) -> None:
    manager, builder = standby_manager(tmp_path, engine_restart_backoff_s=0)
    builder.fail_reload = True
    await started(manager)
    assert manager._standby_task is not None
    await manager._standby_task
    result = await manager.promote("policy", "full-b")
    assert result.method == "standby"
    served = manager.router.resolve("policy")
    assert served.engine.engine.reply == "full-b" and served.engine.restarts == 1
    await manager.close()
    await asyncio.gather(*(e.stop() for e in manager.engines.values()))


async def test_no_standby_engine_unless_asked_or_without_a_registry_entry(tmp_path: Path) -> None:
    manager, builder = in_place_manager(tmp_path / "off")
    await started(manager)
    assert manager._standby_task is None and manager.standby_status() is None
    assert (await manager.promote("policy", "full-b")).method == "new_engine"
    await asyncio.gather(*(e.stop() for e in manager.engines.values()))

    manager, builder = in_place_manager(tmp_path / "dir", standby_engine=True)  # 'base' not an entry
    await started(manager)
    assert manager._standby_task is not None
    await manager._standby_task
    assert manager.standby_status() == {"state": "none"} and builder.instances == []
    assert (await manager.promote("policy", "full-b")).method == "new_engine"
    await manager.close()
    await asyncio.gather(*(e.stop() for e in manager.engines.values()))
