"""Shared fixtures. Engine tests start real `bonserve serve` processes on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from training.base_model import DEFAULT_MODEL_NAME, prepare_default_model
from training.registry import Registry

SERVER_START_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The prepared default checkpoint (built on first use; `make setup` normally did it)."""
    return prepare_default_model(Registry())


@dataclass
class RunningServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path
    model: str = DEFAULT_MODEL_NAME

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def ready(self) -> dict:
        return httpx.get(f"{self.base_url}/ready", timeout=5).json()

    def wait_ready(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()[-4000:]}")
            try:
                body = self.ready()
                if body.get("ready"):
                    return body
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout_s}s:\n{self.log.read_text()[-4000:]}")


def start_server(tmp_dir: Path, *flags: str, env: dict[str, str] | None = None) -> RunningServer:
    port = free_port()
    log = tmp_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), *flags]
    process = subprocess.Popen(
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log)
    try:
        server.wait_ready()
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: RunningServer, timeout_s: float = 60) -> int | None:
    """SIGTERM (graceful drain), then SIGKILL the whole process group (vLLM workers too)."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.process.wait(timeout=10)
    return server.process.returncode


@pytest.fixture(scope="session")
def server(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The default server: `bonserve serve` on the bundled model with default settings."""
    srv = start_server(tmp_path_factory.mktemp("server"))
    yield srv
    stop_server(srv)
