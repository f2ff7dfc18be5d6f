"""`bonserve models prepare`: conversion, idempotence, and recovery from a damaged store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.registry import DEFAULT_MODEL_NAME, MANIFEST, Registry
from training.base_model import prepare_default_model


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_prepare_builds_verifies_and_repairs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = Registry(tmp_path)
    path = prepare_default_model(registry)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["kind"] == "base" and "Paris" in manifest["metrics"]["sanity_answer"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    assert manifest["extra"]["source"].endswith(".gguf")

    capsys.readouterr()
    prepare_default_model(registry)  # idempotent: verifies, does not rebuild
    assert "already prepared and verified" in capsys.readouterr().out

    # an interrupted run leaves a staging dir; a damaged file fails the checksum
    (tmp_path / ".staging-smollm2-135m-instruct-dead").mkdir()
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    prepare_default_model(registry)
    out = capsys.readouterr().out
    assert "removed 1 interrupted write" in out and "rebuilding" in out
    registry.load(DEFAULT_MODEL_NAME, deep=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEFAULT_MODEL_NAME]
