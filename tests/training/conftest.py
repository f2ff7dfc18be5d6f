"""Fixtures for training tests: a throw-away registry holding the real converted base model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from training.registry import Registry


def link_entry(src: Path, registry_root: Path) -> Path:
    """Put an existing entry into another registry: hard links (no 540 MB copy) when the
    file system allows, copies otherwise. Entries are never modified in place, so sharing
    the inodes is safe."""
    dst = registry_root / src.name
    dst.mkdir(parents=True)
    for path in src.iterdir():
        try:
            os.link(path, dst / path.name)
        except OSError:
            shutil.copy2(path, dst / path.name)
    return dst


@pytest.fixture
def tmp_registry(default_model: Path, tmp_path: Path) -> Registry:
    """A fresh registry with the default base model in it."""
    root = tmp_path / "registry"
    link_entry(default_model, root)
    return Registry(root)


@pytest.fixture(scope="module")
def module_registry(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The same, shared by a module's tests (entries written by one test feed the next)."""
    root = tmp_path_factory.mktemp("registry")
    link_entry(default_model, root)
    return Registry(root)
