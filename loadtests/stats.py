"""Statistics of a load test: percentiles, vLLM's TPOT/ITL/goodput, quality intervals, the
oracle ceiling of Best-of-N, and per-request cost. Pure functions on plain numbers (no numpy)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100] (numpy's default method)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """mean, p50, p90, p99 (NaN for no values)."""
    return {
        "mean": statistics.fmean(values) if values else math.nan,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
    }


# --------------------------------------------------------------------------- per-request metrics


def tpot(latency: float, ttft: float, output_tokens: int) -> float:
    """Time per output token after the first, vLLM's definition: (E2EL - TTFT) / (tokens - 1).

    0 for one token or fewer (vLLM counts such requests as meeting any TPOT SLO)."""
    return (latency - ttft) / (output_tokens - 1) if output_tokens > 1 else 0.0


def good_requests(
    slos_ms: dict[str, float], ttfts: Sequence[float], tpots: Sequence[float], e2els: Sequence[float]
) -> int:
    """Requests that meet every given SLO (ms; metrics in seconds), as `vllm bench serve
    --goodput` counts them: a metric without an SLO is not checked."""
    columns = {"ttft": ttfts, "tpot": tpots, "e2el": e2els}
    checked = [(columns[name], limit / 1000) for name, limit in slos_ms.items()]
    return sum(all(values[i] <= limit for values, limit in checked) for i in range(len(ttfts)))


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal 95% interval (1.96 standard errors)."""
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return values[0], math.nan
    return statistics.fmean(values), 1.96 * statistics.stdev(values) / math.sqrt(len(values))


def oracle_at_k(rewards: Sequence[float], k: int) -> float:
    """Expected best gold reward among k of these samples drawn without replacement: the
    ceiling of a perfect reranker at best_of=k. With 0/1 rewards this is the unbiased pass@k
    estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k)."""
    n = len(rewards)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= {n} samples, got k={k}")
    ordered = sorted(rewards)
    # the i-th smallest (0-based) is the maximum of a k-subset in C(i, k-1) of C(n, k) subsets
    return sum(r * math.comb(i, k - 1) for i, r in enumerate(ordered)) / math.comb(n, k)


def request_metrics(
    results: Sequence[Any], duration_s: float, goodput_slos_ms: dict[str, float] | None = None
) -> dict[str, Any]:
    """What `vllm bench serve` reports for one run, plus BoN token and cost accounting.

    `results` are loadtests.client.RequestResult; latencies come back in milliseconds,
    throughputs per second of `duration_s` (first send to last completion).
    """
    ok = [r for r in results if r.success]
    ttfts = [r.ttft for r in ok]
    e2els = [r.latency for r in ok]
    tpots = [tpot(r.latency, r.ttft, r.delivered_tokens) for r in ok]
    itls = [gap for r in ok for gap in r.itl]
    delivered = sum(r.delivered_tokens for r in ok)
    decoded = sum(r.decoded_tokens for r in ok)
    ms = 1000.0
    out: dict[str, Any] = {
        "completed": len(ok),
        "errors": len(results) - len(ok),
        "error_examples": sorted({r.error for r in results if not r.success})[:5],
        "duration_s": duration_s,
        "request_throughput": len(ok) / duration_s if duration_s > 0 else math.nan,
        "output_throughput": delivered / duration_s if duration_s > 0 else math.nan,
        "decoded_throughput": decoded / duration_s if duration_s > 0 else math.nan,
        "mean_prompt_tokens": statistics.fmean(r.prompt_tokens for r in ok) if ok else math.nan,
        "delivered_tokens": delivered,
        "decoded_tokens": decoded,
        "decoded_per_delivered": decoded / delivered if delivered else math.nan,
        "mean_candidates": statistics.fmean(r.candidates for r in ok) if ok else math.nan,
        "reward_model_tokens": sum(r.reward_model_tokens for r in ok),
        # TPOT over requests with more than one token, as vLLM's mean/percentiles do
        **_ms_summary("ttft", ttfts, ms),
        **_ms_summary("e2el", e2els, ms),
        **_ms_summary("tpot", [t for t, r in zip(tpots, ok, strict=True) if r.delivered_tokens > 1], ms),
        **_ms_summary("itl", itls, ms),
    }
    if goodput_slos_ms:
        good = good_requests(goodput_slos_ms, ttfts, tpots, e2els)
        out["good_requests"] = good
        out["request_goodput"] = good / duration_s if duration_s > 0 else math.nan
    out.update(_cost(ok, delivered))
    return out


def _ms_summary(name: str, seconds: Sequence[float], scale: float) -> dict[str, float]:
    return {f"{name}_ms_{k}": v * scale for k, v in summarize(seconds).items()}


def _cost(ok: Sequence[Any], delivered: int) -> dict[str, float]:
    """Per-request cost from bonserve's cost model (usage.bonserve), NaN when not reported."""
    out: dict[str, float] = {}
    for key, attr in (("engine_seconds", "engine_seconds"), ("cost_usd", "cost_usd")):
        values = [getattr(r, attr) for r in ok]
        if not ok or any(v is None for v in values):
            out |= {f"{key}_per_request": math.nan, f"{key}_per_1k_delivered": math.nan}
            continue
        total = sum(values)
        out[f"{key}_per_request"] = total / len(ok)
        out[f"{key}_per_1k_delivered"] = 1000 * total / delivered if delivered else math.nan
    return out
