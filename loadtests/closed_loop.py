"""Closed-loop load: `concurrency` workers issue `n_requests` calls in total."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from loadtests.stats import summarize


async def closed_loop(
    call: Callable[[int], Awaitable[int]], n_requests: int, concurrency: int
) -> dict[str, float]:
    """`call(i)` performs request i and returns the tokens it delivered.

    Returns request and token throughput plus latency mean/p50/p90/p99 (seconds).
    """
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0

    async def one(i: int) -> None:
        nonlocal tokens
        async with sem:
            t0 = time.perf_counter()
            delivered = await call(i)  # not `tokens += await ...`: that reads tokens before the await
            tokens += delivered
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n_requests)))
    wall = time.perf_counter() - t0
    return {"req_per_s": n_requests / wall, "tok_per_s": tokens / wall, **summarize(latencies)}
