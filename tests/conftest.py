"""Shared fixtures. Engine tests start real `bonserve serve` processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.registry import Registry
from loadtests.servers import ServerProcess, start_bonserve
from training.base_model import prepare_default_model


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The prepared default checkpoint (built on first use; `make setup` normally did it)."""
    return prepare_default_model(Registry())


@pytest.fixture(scope="session")
def server(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The default server: `bonserve serve` on the bundled model with default settings."""
    srv = start_bonserve(tmp_path_factory.mktemp("server"))
    yield srv
    srv.stop()
