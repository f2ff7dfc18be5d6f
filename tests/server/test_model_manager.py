"""ModelManager checks that need no engine: memory refusal, kinds, and router atomicity."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.registry import Manifest, Registry
from server.config import Settings
from server.engine_config import EngineBuilder
from server.engines import ManagedEngine
from server.errors import APIError
from server.model_manager import ModelManager
from server.models import ModelRouter, ServedModel
from tests.server.fakes import FakeAsyncLLM


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
