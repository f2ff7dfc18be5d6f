"""closed_loop counts every delivered token, whatever the interleaving of its workers."""

from __future__ import annotations

import asyncio

import pytest

from loadtests.closed_loop import closed_loop


async def test_tokens_of_concurrent_calls_all_count() -> None:
    async def call(i: int) -> int:
        await asyncio.sleep(0.01 * (i % 3))  # calls finish out of order, several at a time
        return 10 + i

    result = await closed_loop(call, n_requests=12, concurrency=4)
    expected = sum(10 + i for i in range(12))
    assert result["tok_per_s"] * (12 / result["req_per_s"]) == pytest.approx(expected)
