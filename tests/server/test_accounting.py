"""Cost attribution adds up: every admitted request (succeeded, failed in the engine, timed
out, cancelled by its client, /v1/rewards) is attributed its share of engine time, and the
shares sum to the time the engine was busy, measured independently by the (named) fake
engine's own record of its generate calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from server import metrics
from tests.server.fakes import FakeTimedLLM


def _total(counter: Any) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


async def test_attributions_sum_to_busy_time_with_failures_and_cancellations(
    client_for: Callable[..., Any],
) -> None:
    engine = FakeTimedLLM(delay_s=0.2)
    c = await client_for(lambda: engine, request_timeout_s=1.5, accelerator_price_per_hour=3600.0)
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    # Warm-up: the first request pays one-off imports inside its slot (engine-busy by the
    # server's clock, not by the fake's); measure after it.
    assert (await c.post("/v1/chat/completions", json={**chat, "max_tokens": 4})).status_code == 200
    engine.intervals.clear()
    before, cost_before = _total(metrics.ENGINE_SECONDS), _total(metrics.COST)

    async def ok() -> int:
        return (await c.post("/v1/chat/completions", json={**chat, "max_tokens": 4})).status_code

    async def fails() -> int:  # the fake raises inside the engine
        return (await c.post("/v1/chat/completions", json={**chat, "max_tokens": 3})).status_code

    async def times_out() -> int:  # 10 x 0.2 s in the fake engine, past the 1.5 s deadline
        return (await c.post("/v1/chat/completions", json={**chat, "max_tokens": 5})).status_code

    async def cancelled() -> int:
        task = asyncio.create_task(ok())
        await asyncio.sleep(0.1)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return -1
        return 0

    statuses = await asyncio.gather(ok(), ok(), fails(), fails(), cancelled(), cancelled(), times_out(), ok())
    await asyncio.sleep(0.5)  # cancelled requests leave the engine when the fake's sleep ends
    assert {200, 500, 504, -1} <= set(statuses), statuses
    busy = _union(engine.intervals)
    attributed = _total(metrics.ENGINE_SECONDS) - before
    assert len(engine.intervals) >= 6  # a cancelled client may leave before its request is admitted
    assert abs(attributed - busy) <= 0.05 * busy + 0.05, (attributed, busy)
    # price 3600/h = 1 $/s: the cost counter follows the same seconds
    assert abs((_total(metrics.COST) - cost_before) - attributed) < 1e-6
