"""core/lora.py: the one servability check and the one resolver of a LoRA entry's base.
Adapter directories here are fakes (hand-written adapter_config.json), named as such."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.lora import (
    AdapterError,
    adapter_rank,
    check_servable_adapter,
    full_weights_of,
    smallest_servable_rank,
)
from core.registry import Manifest, Registry, RegistryError


def fake_adapter(path: Path, **cfg: object) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 16, **cfg}))
    (path / "adapter_model.safetensors").write_bytes(b"fake")
    return path


def test_servable_adapters_and_the_codes_of_refusals(tmp_path: Path) -> None:
    assert check_servable_adapter(fake_adapter(tmp_path / "ok"))["r"] == 16
    with pytest.raises(AdapterError, match="modules_to_save") as exc:
        check_servable_adapter(fake_adapter(tmp_path / "mts", modules_to_save=["score"]))
    assert exc.value.code == "invalid_checkpoint"
    with pytest.raises(AdapterError, match="rank 12") as exc:
        check_servable_adapter(fake_adapter(tmp_path / "r12", r=12))
    assert exc.value.code == "unsupported_lora_rank"
    with pytest.raises(AdapterError, match="rank 32"):  # servable by vLLM, not under this cap
        check_servable_adapter(fake_adapter(tmp_path / "r32", r=32), max_rank=16)
    with pytest.raises(AdapterError, match="missing"):
        check_servable_adapter(tmp_path / "nothing")
    broken = fake_adapter(tmp_path / "broken")
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="corrupt"):
        check_servable_adapter(broken)
    assert adapter_rank(tmp_path / "r32") == 32 and adapter_rank(broken) is None


def test_smallest_servable_rank() -> None:
    assert [smallest_servable_rank(r) for r in (1, 2, 8, 9, 16, 17, 300)] == [1, 8, 8, 16, 16, 32, 320]


def test_full_weights_of_resolves_one_level_only(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    for manifest in (
        Manifest(name="base", kind="base"),
        Manifest(name="lora", kind="sft", format="lora", base_model="base"),
        Manifest(name="orphan", kind="sft", format="lora"),
        Manifest(name="stacked", kind="dpo", format="lora", base_model="lora"),
    ):
        with registry.write(manifest) as staging:
            (staging / "weights.bin").write_bytes(b"x")
    assert full_weights_of(registry, registry.load("base")).name == "base"
    assert full_weights_of(registry, registry.load("lora")).name == "base"
    with pytest.raises(RegistryError, match="names no base_model"):
        full_weights_of(registry, registry.load("orphan"))
    with pytest.raises(RegistryError, match="do not stack"):
        full_weights_of(registry, registry.load("stacked"))
