"""Lifecycle of the in-process vLLM engines: start, watch, restart after death, stop.

vLLM's `AsyncLLM` runs its EngineCore in a child process. If that process dies (e.g. the
CPU backend's crash under concurrent seeded sampling), every request in flight gets
`EngineDeadError` and the engine never recovers. `ManagedEngine` turns that into a state
machine the server can act on: in-flight requests fail with 503, `/ready` turns false, and a
fresh engine is started in the background, so the server serves again without a restart.
Death is noticed in two places only, both here: the watchdog, and `ManagedEngine.guard`,
which every generate/encode call runs inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from server.errors import unavailable
from server.metrics import ENGINE_METRICS, ENGINE_RESTARTS

logger = logging.getLogger("bonserve.engines")


class EngineState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    DEAD = "dead"
    RESTARTING = "restarting"
    FAILED = "failed"  # could not start at all: a configuration problem, not retried
    STOPPED = "stopped"


class EngineUnavailable(RuntimeError):
    """The engine cannot take requests right now (starting, restarting or dead)."""

    def __init__(self, name: str, state: EngineState, detail: str = "") -> None:
        self.name, self.state = name, state
        super().__init__(f"engine '{name}' is {state.value}{': ' + detail if detail else ''}")


@dataclass
class EngineInfo:
    """Facts about a started engine that request handling needs without touching vLLM."""

    max_model_len: int
    eos_token_id: int | None
    dtype: str  # what the engine computes in ("auto" resolved): shown by /ready


EngineFactory = Callable[[], Any]


_SPAWN_LOCK = threading.Lock()


def build_async_llm(
    engine_kwargs: dict[str, Any], env: dict[str, str] | None = None, metrics_name: str | None = None
) -> Any:
    """Create a vLLM AsyncLLM from plain AsyncEngineArgs keyword arguments (blocking).

    `env` is applied only while the engine's processes are spawned (they inherit it): the
    way to give co-located engines different thread settings. The lock keeps two engines
    from seeing each other's overrides.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    with _SPAWN_LOCK:
        saved = {k: os.environ.get(k) for k in env or {}}
        os.environ.update(env or {})
        try:
            engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs))
            if metrics_name:  # before the next engine's creation unregisters its series
                ENGINE_METRICS.adopt(metrics_name)
            return engine
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


class ManagedEngine:
    """One vLLM engine plus its restart policy.

    `factory` builds a started AsyncLLM (blocking; it runs in a worker thread so the event
    loop keeps answering health checks while weights load).
    """

    def __init__(
        self,
        name: str,
        factory: EngineFactory,
        *,
        restart_backoff_s: float = 2.0,
        watch_interval_s: float = 0.5,
    ) -> None:
        self.name = name
        self._factory = factory
        self._restart_backoff_s = restart_backoff_s
        self._watch_interval_s = watch_interval_s
        self.engine: Any = None
        self.info: EngineInfo | None = None
        self.state = EngineState.STOPPED
        self.last_error = ""
        self.restarts = 0
        self._lifecycle: asyncio.Task[None] | None = None
        ENGINE_RESTARTS.labels(name)  # exported as 0 from the start, so alerts can use it
        self._restart_lock = asyncio.Lock()
        self._death_reports: set[asyncio.Task[None]] = set()  # held so they are not collected

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the engine and its watchdog; returns once the first start finished or failed."""
        self.state = EngineState.STARTING
        await self._boot()
        self._lifecycle = asyncio.create_task(self._watch(), name=f"watch-{self.name}")

    async def _boot(self) -> None:
        t0 = time.monotonic()
        try:
            engine = await asyncio.to_thread(self._factory)
        except Exception as exc:
            self.state = EngineState.FAILED
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.error("engine %s failed to start: %s", self.name, self.last_error)
            return
        self.engine = engine
        config = engine.model_config
        tokenizer = engine.get_tokenizer()
        self.info = EngineInfo(
            max_model_len=config.max_model_len,
            eos_token_id=getattr(tokenizer, "eos_token_id", None),
            dtype=str(config.dtype).removeprefix("torch."),
        )
        self.state = EngineState.RUNNING
        logger.info("engine %s running (%s, start %.1fs)", self.name, self.info.dtype, time.monotonic() - t0)

    async def _watch(self) -> None:
        while self.state not in (EngineState.STOPPED, EngineState.FAILED):
            await asyncio.sleep(self._watch_interval_s)
            if self.state == EngineState.RUNNING and self.engine is not None and self.engine.errored:
                await self.report_dead("engine core exited", self.engine)

    async def report_dead(self, reason: str, failed: Any) -> None:
        """Called by the watchdog or by a request that saw EngineDeadError from engine
        instance `failed`; restarts once per dead instance (later reports about an instance
        already replaced are ignored)."""
        async with self._restart_lock:
            if self.state != EngineState.RUNNING or self.engine is not failed:
                return
            self.state = EngineState.DEAD
            self.last_error = reason
            logger.error("engine %s died (%s); restarting", self.name, reason)
            old, self.engine = self.engine, None
            await asyncio.to_thread(_shutdown_quietly, old)
            self.state = EngineState.RESTARTING
            await asyncio.sleep(self._restart_backoff_s)
            await self._boot()
            if self.state == EngineState.RUNNING:
                self.restarts += 1
                ENGINE_RESTARTS.labels(self.name).inc()

    def retarget(self, name: str, factory: EngineFactory) -> None:
        """Serve another checkpoint under `name`: restarts build from `factory` from now on
        (what an in-place weight load needs, so a restart does not bring the old weights back)."""
        ENGINE_METRICS.rename(self.name, name)
        ENGINE_RESTARTS.labels(name)
        self.name, self._factory = name, factory

    async def reload_weights(self, path: str) -> None:
        """Load the checkpoint at `path` into the running engine (vLLM's in-place
        `reload_weights`; same architecture), then drop the prefix cache: its KV blocks were
        computed with the previous weights. The caller makes sure nothing is decoding."""
        engine = self.require()
        t0 = time.monotonic()
        await engine.collective_rpc("reload_weights", kwargs={"weights_path": path})
        await engine.reset_prefix_cache()
        logger.info("engine %s loaded %s in place (%.1fs)", self.name, path, time.monotonic() - t0)

    async def restart(self, reason: str) -> None:
        """Replace the running engine with a fresh one from the factory."""
        if self.engine is not None:
            await self.report_dead(reason, self.engine)

    async def stop(self) -> None:
        self.state = EngineState.STOPPED
        if self._lifecycle is not None:
            self._lifecycle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lifecycle
        old, self.engine = self.engine, None
        await asyncio.to_thread(_shutdown_quietly, old)
        ENGINE_METRICS.drop(self.name)

    # ------------------------------------------------------------------ use

    def require(self) -> Any:
        """The running AsyncLLM, or EngineUnavailable (mapped to 503 by the API layer)."""
        if self.state != EngineState.RUNNING or self.engine is None:
            raise EngineUnavailable(self.name, self.state, self.last_error)
        return self.engine

    @contextlib.contextmanager
    def guard(self, engine: Any, subject: str) -> Iterator[None]:
        """Wrap calls into `engine` (an instance `require()` returned): an EngineDeadError
        schedules the restart of that instance and leaves as a 503 saying `subject` died.
        The one place a request reports engine death; other exceptions pass unchanged."""
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            yield
        except EngineDeadError as exc:
            task = asyncio.get_running_loop().create_task(self.report_dead(str(exc), engine))
            self._death_reports.add(task)
            task.add_done_callback(self._death_reports.discard)
            raise unavailable(f"{subject} died and is restarting; retry") from exc

    @property
    def ready(self) -> bool:
        return self.state == EngineState.RUNNING

    def status(self) -> dict[str, Any]:
        unfinished = None
        if self.ready and self.engine is not None:
            unfinished = self.engine.get_num_unfinished_requests()
        return {
            "state": self.state.value,
            "restarts": self.restarts,
            "last_error": self.last_error or None,
            "unfinished_requests": unfinished,
            "dtype": self.info.dtype if self.info else None,
        }


def _shutdown_quietly(engine: Any) -> None:
    if engine is None:
        return
    try:
        engine.shutdown()
    except Exception as exc:
        logger.warning("engine shutdown raised %s: %s", type(exc).__name__, exc)
