"""Admission control: a bounded number of requests in the engine, a bounded queue, 429 beyond."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from server import metrics
from server.errors import APIError


@dataclass
class Lease:
    """One request's stay in the engine: queue wait, and (after release) its attributed
    share of engine busy time (see server.metrics, cost model)."""

    queue_s: float = 0.0
    engine_seconds: float = 0.0


class Admission:
    """Bounded admission: `max_concurrent` requests in the engine, `max_waiting` queued.

    Beyond that a request is refused at once with 429, so overload shows up as fast,
    retryable errors instead of unbounded latency.
    """

    def __init__(self, max_concurrent: int, max_waiting: int, price_per_hour: float = 0.0) -> None:
        self._slots = asyncio.Semaphore(max_concurrent)
        self.price_per_hour = price_per_hour
        self.max_waiting = max_waiting
        self.waiting = 0
        self.running = 0
        self._clock = metrics.ShareClock()

    def check(self) -> None:
        """Refuse now if the queue is full (called before a stream's 200 header goes out)."""
        if self._slots.locked() and self.waiting >= self.max_waiting:
            raise APIError(
                429,
                f"server is at capacity ({self.running} running, {self.waiting} waiting); retry",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            )

    @contextlib.asynccontextmanager
    async def slot(self, model: str = "unknown", mode: str = "single") -> AsyncIterator[Lease]:
        """Hold one engine slot. Whatever happens inside (success, an error, a timeout, a
        client that leaves), the request's share of engine time is attributed on the way out:
        `bonserve_engine_seconds_total` and the cost always add up to the engine's busy time."""
        self.check()
        lease = Lease()
        t0 = time.perf_counter()
        self.waiting += 1
        metrics.WAITING.inc()
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
            metrics.WAITING.dec()
        lease.queue_s = time.perf_counter() - t0
        metrics.QUEUE.labels(model).observe(lease.queue_s)
        self.running += 1
        metrics.IN_FLIGHT.inc()
        start = self._clock.enter()
        try:
            yield lease
        finally:
            lease.engine_seconds = self._clock.leave(start)
            metrics.ENGINE_SECONDS.labels(model, mode).inc(lease.engine_seconds)
            metrics.COST.labels(model, mode).inc(lease.engine_seconds * self.price_per_hour / 3600)
            self.running -= 1
            metrics.IN_FLIGHT.dec()
            self._slots.release()


# --------------------------------------------------------------------------- models
