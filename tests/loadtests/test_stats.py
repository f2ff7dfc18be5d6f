"""Statistics on hand-computed inputs: percentiles, vLLM's TPOT/ITL/goodput, oracle, cost."""

from __future__ import annotations

import math

import pytest

from loadtests.client import RequestResult
from loadtests.stats import (
    good_requests,
    mean_ci95,
    oracle_at_k,
    percentile,
    request_metrics,
    summarize,
    tpot,
)


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # sorted 1 2 3 4
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)  # pos 2.7 -> 3 + 0.7
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert math.isnan(percentile([], 50))
    assert summarize([1.0, 2.0, 3.0]) == {
        "mean": 2.0,
        "p50": 2.0,
        "p90": pytest.approx(2.8),
        "p99": pytest.approx(2.98),
    }


def test_tpot_is_vllms_definition() -> None:
    assert tpot(latency=1.0, ttft=0.2, output_tokens=5) == pytest.approx(0.2)  # 0.8 s / 4 gaps
    assert tpot(latency=1.0, ttft=0.2, output_tokens=1) == 0.0
    assert tpot(latency=1.0, ttft=1.0, output_tokens=0) == 0.0


def test_goodput_counts_requests_meeting_every_given_slo() -> None:
    ttfts, tpots, e2els = [0.1, 0.3, 0.1, 0.1], [0.01, 0.01, 0.05, 0.01], [1.0, 1.0, 1.0, 3.0]
    assert good_requests({}, ttfts, tpots, e2els) == 4
    assert good_requests({"ttft": 200}, ttfts, tpots, e2els) == 3
    assert good_requests({"ttft": 200, "tpot": 20}, ttfts, tpots, e2els) == 2
    assert good_requests({"ttft": 200, "tpot": 20, "e2el": 2000}, ttfts, tpots, e2els) == 1
    assert good_requests({"ttft": 100}, ttfts, tpots, e2els) == 3  # the limit itself is good


def test_oracle_at_k_is_unbiased_pass_at_k_and_expected_max() -> None:
    rewards = [1.0, 0.0, 0.0, 0.0]  # c=1 of n=4
    assert oracle_at_k(rewards, 1) == pytest.approx(0.25)
    assert oracle_at_k(rewards, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))  # 0.5
    assert oracle_at_k(rewards, 4) == 1.0
    # fractional rewards: the expected max over all 3 pairs of {0.2, 0.5, 0.9} = (0.5+0.9+0.9)/3
    assert oracle_at_k([0.5, 0.2, 0.9], 2) == pytest.approx((0.5 + 0.9 + 0.9) / 3)
    with pytest.raises(ValueError):
        oracle_at_k(rewards, 5)


def test_mean_ci95() -> None:
    mean, half = mean_ci95([0.0, 1.0, 0.0, 1.0])
    assert mean == 0.5
    assert half == pytest.approx(1.96 * math.sqrt(1 / 3) / 2)
    assert math.isnan(mean_ci95([])[0])


def ok(
    ttft: float,
    latency: float,
    delivered: int,
    decoded: int,
    itl: list[float],
    cost: float | None = 0.5,
    index: int = 0,
) -> RequestResult:
    return RequestResult(
        index,
        success=True,
        ttft=ttft,
        latency=latency,
        itl=itl,
        prompt_tokens=10,
        delivered_tokens=delivered,
        decoded_tokens=decoded,
        candidates=decoded // max(delivered, 1),
        engine_seconds=1.0,
        cost_usd=cost,
    )


def test_request_metrics_on_known_requests() -> None:
    results = [
        ok(0.1, 0.5, 5, 5, [0.1, 0.1, 0.1, 0.1]),  # tpot 0.1
        ok(0.4, 0.4, 4, 16, []),  # BoN: one chunk, tpot 0
        ok(0.2, 0.2, 1, 1, []),  # one token: no TPOT sample
        RequestResult(3, error="APIStatusError: 429"),
    ]
    m = request_metrics(results, duration_s=2.0, goodput_slos_ms={"ttft": 300, "tpot": 50})
    assert (m["completed"], m["errors"]) == (3, 1)
    assert m["error_examples"] == ["APIStatusError: 429"]
    assert m["request_throughput"] == 1.5
    assert m["output_throughput"] == 5.0 and m["decoded_throughput"] == 11.0
    assert m["decoded_per_delivered"] == pytest.approx(22 / 10)
    assert m["ttft_ms_p50"] == pytest.approx(200) and m["e2el_ms_mean"] == pytest.approx(1100 / 3)
    assert m["tpot_ms_mean"] == pytest.approx(50)  # (100 + 0) / 2: the one-token request is out
    assert m["itl_ms_mean"] == pytest.approx(100) and m["itl_ms_p99"] == pytest.approx(100)
    # ttft <= 300: first and third; tpot <= 50 ms: second and third (0 for one token)
    assert m["good_requests"] == 1 and m["request_goodput"] == 0.5
    assert m["cost_usd_per_request"] == 0.5 and m["cost_usd_per_1k_delivered"] == 150.0
    assert m["engine_seconds_per_request"] == 1.0


def test_cost_is_nan_when_the_server_does_not_report_it() -> None:
    m = request_metrics([ok(0.1, 0.2, 2, 2, [0.1], cost=None)], duration_s=1.0)
    assert math.isnan(m["cost_usd_per_request"]) and "request_goodput" not in m
