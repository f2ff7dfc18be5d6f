"""Start and stop servers for benchmarks and load tests: bonserve and vLLM's own OpenAI server.

Both run as child processes in their own process group (vLLM spawns workers), bound to
127.0.0.1, and are always killed as a group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from core.engine_args import default_dtype, resolve_dtype


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    name: str
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path
    ready_path: str
    model: str = "smollm2-135m-instruct"

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def ready(self) -> dict:
        """bonserve's /ready body (200 or 503)."""
        return httpx.get(f"{self.base_url}/ready", timeout=5).json()

    def wait_ready(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; log tail:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.base_url + self.ready_path, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready after {timeout_s}s")

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL the whole process group (vLLM workers too)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        return self.process.returncode


def spawn(
    name: str,
    cmd: Sequence[str],
    log_dir: Path,
    port: int,
    ready_path: str,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start `cmd` in its own process group, logging to `log_dir`, without waiting for it
    (benchmarks/start_time.py times the wait itself)."""
    log = log_dir / f"{name}-{port}.log"
    process = subprocess.Popen(
        list(cmd),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    return ServerProcess(name, f"http://127.0.0.1:{port}", process, log, ready_path)


def start_bonserve(log_dir: Path, *flags: str, env: dict[str, str] | None = None) -> ServerProcess:
    """Start `bonserve serve` and return once /ready says every engine is up."""
    port = free_port()
    cmd = [sys.executable, "-m", "bonserve.cli", "serve", "--port", str(port), *flags]
    server = spawn("bonserve", cmd, log_dir, port, "/ready", env)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def start_vllm(
    log_dir: Path,
    model_path: Path,
    served_name: str,
    *,
    max_model_len: int = 2048,
    kv_cache_gib: float = 1.0,
    dtype: str | None = None,
    extra: Sequence[str] = (),
    name: str = "vllm",
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """vLLM's own OpenAI server with the engine configured like bonserve's (`dtype` None:
    the one bonserve's default resolves to on this machine)."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        str(model_path),
        "--served-model-name",
        served_name,
        "--dtype",
        dtype or resolve_dtype(default_dtype()),
        "--max-model-len",
        str(max_model_len),
        "--kv-cache-memory-bytes",
        str(int(kv_cache_gib * (1 << 30))),
        "--no-enable-chunked-prefill",
        "--max-num-batched-tokens",
        str(max(max_model_len, 2048)),
        "--seed",
        "0",
        "--disable-uvicorn-access-log",
        *extra,
    ]
    return spawn(name, cmd, log_dir, port, "/health", env)


def start_vllm_defaults(
    log_dir: Path, model_path: Path, served_name: str, memory_fraction: float = 0.4
) -> ServerProcess:
    """vLLM's own OpenAI server as a user would start it: the model and a name, every engine
    setting vLLM's default for this machine but one. On CPU vLLM reserves
    `gpu_memory_utilization` (default 0.92) of RAM and refuses to start unless that much is
    free, so next to another server it needs a smaller fraction (`memory_fraction`)."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--model", str(model_path), "--served-model-name", served_name]
    cmd += ["--gpu-memory-utilization", str(memory_fraction)]
    return spawn("vllm-defaults", cmd, log_dir, port, "/health")
