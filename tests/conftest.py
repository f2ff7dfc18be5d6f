"""Shared fixtures. Engine tests start real `bonserve serve` processes on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.engine_args import DTYPE_ENV

# Every engine the tests build, in-process or in a server they start, computes in float32:
# their references are float32 transformers computations, and "auto" would pick bfloat16 on
# CPUs that have it. tests/test_engine_smoke.py runs the "auto" default itself.
os.environ[DTYPE_ENV] = "float32"

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
