"""Registry: atomic writes, verification, confinement of names to the root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.registry import MANIFEST, Manifest, Registry, RegistryError


def _write(reg: Registry, name: str = "ckpt", payload: bytes = b"weights") -> Path:
    with reg.write(Manifest(name=name, kind="sft", base_model="base")) as staging:
        (staging / "model.safetensors").write_bytes(payload)
        (staging / "sub").mkdir()
        (staging / "sub" / "tok.json").write_text("{}")
    return reg.path_of(name)


def test_write_then_load_roundtrip(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    path = _write(reg)
    entry = reg.load("ckpt", deep=True)
    assert entry.path == path
    assert set(entry.manifest.files) == {"model.safetensors", "sub/tok.json"}
    assert entry.manifest.files["model.safetensors"]["size"] == len(b"weights")
    assert [e.name for e in reg.entries()] == ["ckpt"]


def test_failed_write_leaves_no_entry_and_keeps_old(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    _write(reg, payload=b"old")
    with pytest.raises(RuntimeError), reg.write(Manifest(name="ckpt", kind="sft")) as staging:
        (staging / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert (reg.path_of("ckpt") / "model.safetensors").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_directory_without_manifest_is_not_an_entry(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(RegistryError, match=r"no manifest\.json"):
        reg.load("partial")
    assert reg.entries() == []
    assert "partial" in reg.problems()


def test_truncated_file_and_bad_checksum_are_detected(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    path = _write(reg)
    (path / "model.safetensors").write_bytes(b"weight")  # truncated
    with pytest.raises(RegistryError, match="wrong size"):
        reg.load("ckpt")
    (path / "model.safetensors").write_bytes(b"WEIGHTS")  # same size, other bytes
    reg.load("ckpt")  # the cheap check passes ...
    with pytest.raises(RegistryError, match="checksum"):
        reg.load("ckpt", deep=True)  # ... the deep one does not


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", json.dumps({"name": "ckpt"}), json.dumps({"name": "ckpt", "kind": "weird"})],
)
def test_corrupt_manifest_is_rejected(tmp_path: Path, content: str) -> None:
    reg = Registry(tmp_path)
    path = _write(reg)
    (path / MANIFEST).write_text(content)
    with pytest.raises(RegistryError):
        reg.load("ckpt")


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "", "x" * 200, "/abs", "..", "m.json"])
def test_names_cannot_escape_the_root(tmp_path: Path, name: str) -> None:
    with pytest.raises(RegistryError, match="invalid checkpoint name"):
        Registry(tmp_path).path_of(name)


def test_stale_staging_is_removed(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    (tmp_path / ".staging-x-1234").mkdir()
    assert reg.remove_stale_staging() == [".staging-x-1234"]
    assert not any(tmp_path.iterdir())
