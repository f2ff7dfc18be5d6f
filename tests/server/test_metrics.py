"""Metrics move by the right amounts (over named fakes), and the cost clock is exact."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from server.metrics import ShareClock
from tests.server.test_bon_with_fakes import CHAT, bon_client  # noqa: F401 (fixture)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_share_clock_attributes_busy_time_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two requests overlapping for 2 of their 4 and 3 seconds: shares 3 and 2 = 5 busy s."""
    now = [0.0]
    monkeypatch.setattr("server.metrics.time.monotonic", lambda: now[0])
    clock = ShareClock()
    a = clock.enter()  # t=0: A alone
    now[0] = 2.0
    b = clock.enter()  # t=2: A and B
    now[0] = 4.0
    share_a = clock.leave(a)  # A: 2 alone + 2 shared/2 = 3
    now[0] = 5.0
    share_b = clock.leave(b)  # B: 2 shared/2 + 1 alone = 2
    assert (share_a, share_b) == (3.0, 2.0)


async def test_request_metrics_single_and_bon(bon_client: Callable[..., Any]) -> None:  # noqa: F811
    c = await bon_client(accelerator_price_per_hour=3600.0)  # $1 per replica-second
    before = {
        k: value(k, model="fake", mode=m)
        for k in (
            "bonserve_decoded_tokens_total",
            "bonserve_delivered_tokens_total",
            "bonserve_estimated_cost_dollars_total",
            "bonserve_engine_seconds_total",
        )
        for m in ("bon",)
    }
    req_before = value("bonserve_requests_total", model="fake", mode="bon", status="200")
    single_before = value("bonserve_requests_total", model="fake", mode="single", status="200")
    bad_before = value("bonserve_requests_total", model="unknown", mode="single", status="404")
    cand_before = value("bonserve_candidates_per_request_count", model="fake")
    e2e_before = value("bonserve_e2e_request_latency_seconds_count", model="fake", mode="bon")

    r = (await c.post("/v1/chat/completions", json={**CHAT, "n": 1, "best_of": 4})).json()
    await c.post("/v1/chat/completions", json=CHAT)
    await c.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    await asyncio.sleep(0)

    assert value("bonserve_requests_total", model="fake", mode="bon", status="200") == req_before + 1
    assert value("bonserve_requests_total", model="fake", mode="single", status="200") == single_before + 1
    assert value("bonserve_requests_total", model="unknown", mode="single", status="404") == bad_before + 1
    assert (
        value("bonserve_decoded_tokens_total", model="fake", mode="bon")
        == before["bonserve_decoded_tokens_total"] + 1 + 2 + 3 + 4
    )
    assert (
        value("bonserve_delivered_tokens_total", model="fake", mode="bon")
        == before["bonserve_delivered_tokens_total"] + 4
    )
    assert value("bonserve_candidates_per_request_count", model="fake") == cand_before + 2
    assert value("bonserve_e2e_request_latency_seconds_count", model="fake", mode="bon") == e2e_before + 1
    usage = r["usage"]["bonserve"]
    assert value("bonserve_estimated_cost_dollars_total", model="fake", mode="bon") == pytest.approx(
        before["bonserve_estimated_cost_dollars_total"] + usage["estimated_cost_usd"]
    )
    assert usage["estimated_cost_usd"] == pytest.approx(usage["engine_seconds"])
    assert value("bonserve_chosen_reward_count", model="fake") >= 1
    assert value("bonserve_reward_model_tokens_total", model="fake") >= usage["reward_model_tokens"] > 0
