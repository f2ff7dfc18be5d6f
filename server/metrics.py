"""Prometheus metrics: bonserve's own series plus vLLM's `vllm:*` series of every engine.

Naming follows Prometheus conventions (base units, `_seconds`, `_total`); labels are bounded:
`model` is a served model name or "unknown", `mode` is "single" or "bon" ("rewards" too for
engine seconds and cost, from /v1/rewards), `status` is an HTTP status code.

Cost model (estimated, documented in README "Metrics"): a replica costs
`accelerator_price_per_hour`. Each request is attributed the replica-seconds
  engine_seconds = integral over its time in the engine of 1 / N(t)
where N(t) is the number of requests in the engine at time t. The attributions of all
requests add up exactly to the time the engine was busy, whether they succeed, fail, time
out or are cancelled (server/admission.py counts them on the way out); idle time is attributed to no
request (it shows as price/hour minus the rate of attributed cost). Limits: requests are
weighted equally whatever their token counts, and the price is per replica, not per chip.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Summary
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    60.0,
    120.0,
)
CANDIDATE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

REQUESTS = Counter(
    "bonserve_requests_total", "Requests by served model, mode and HTTP status.", ["model", "mode", "status"]
)
TTFT = Histogram(
    "bonserve_time_to_first_token_seconds",
    "Time from request arrival to the first delivered content token (BoN: after selection).",
    ["model", "mode"],
    buckets=LATENCY_BUCKETS,
)
E2E = Histogram(
    "bonserve_e2e_request_latency_seconds",
    "Request arrival to last byte.",
    ["model", "mode"],
    buckets=LATENCY_BUCKETS,
)
QUEUE = Histogram(
    "bonserve_queue_time_seconds", "Time waiting for an admission slot.", ["model"], buckets=LATENCY_BUCKETS
)
CANDIDATES = Histogram(
    "bonserve_candidates_per_request", "Candidates sampled per request.", ["model"], buckets=CANDIDATE_BUCKETS
)
RESUMED_PROMPT_TOKENS = Counter(
    "bonserve_bon_resumed_prompt_tokens_total",
    "Pruned Best-of-N in 'hold' mode: prompt tokens prefilled again to resume the survivors of a "
    "checkpoint (prefix caching serves the cached part).",
    ["model"],
)
CANDIDATE_OUTCOMES = Counter(
    "bonserve_bon_candidates_total",
    "Best-of-N candidates under pruning / adaptive N, by outcome (finished, pruned, stopped).",
    ["model", "outcome"],
)
REWARD_SCORING = Histogram(
    "bonserve_reward_scoring_seconds",
    "Scoring all candidates of a request with the reward model.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
# A Summary (sum and count), not a Histogram: rewards can be negative, and the Prometheus client
# drops a histogram's _sum when its buckets go below zero, so the mean could not be computed.
CHOSEN_REWARD = Summary("bonserve_chosen_reward", "Reward of the best returned candidate.", ["model"])
REWARD_GAP = Histogram(
    "bonserve_chosen_reward_gap",
    "Reward of the best candidate minus the mean reward of all candidates.",
    ["model"],
    buckets=(0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
)
PROMPT_TOKENS = Counter("bonserve_prompt_tokens_total", "Prompt tokens.", ["model", "mode"])
DELIVERED_TOKENS = Counter(
    "bonserve_delivered_tokens_total", "Completion tokens returned to clients.", ["model", "mode"]
)
DECODED_TOKENS = Counter(
    "bonserve_decoded_tokens_total", "Completion tokens decoded, every candidate counted.", ["model", "mode"]
)
REWARD_TOKENS = Counter("bonserve_reward_model_tokens_total", "Tokens scored by the reward model.", ["model"])
ENGINE_SECONDS = Counter(
    "bonserve_engine_seconds_total",
    "Replica-seconds attributed to requests (see cost model).",
    ["model", "mode"],
)
COST = Counter(
    "bonserve_estimated_cost_dollars_total",
    "Estimated cost: attributed replica-seconds x price per hour / 3600.",
    ["model", "mode"],
)
ENGINE_RESTARTS = Counter("bonserve_engine_restarts_total", "Engine restarts after death.", ["engine"])
SWAPS = Counter("bonserve_swaps_total", "Hot-swaps (promotions) completed.", ["role"])
SWAP_SECONDS = Histogram(
    "bonserve_swap_duration_seconds",
    "Promotion time: load/warm the new checkpoint, switch, drain the old.",
    ["role"],
    buckets=LATENCY_BUCKETS,
)
SWAP_ROLES = ("policy", "reward")
for _role in SWAP_ROLES:  # exported (as 0) before the first swap, so dashboards and absent() see them
    SWAPS.labels(_role)
    SWAP_SECONDS.labels(_role)
DESIRED_STATE_IN_SYNC = Gauge(
    "bonserve_desired_state_in_sync",
    "1 when this server's aliases and reward model match the registry's desired state (0: not yet, "
    "or a target it cannot serve; see /admin/state 'reconcile').",
)
RECONCILE_FAILURES = Counter(
    "bonserve_reconcile_failures_total", "Failed attempts to apply the registry's desired state."
)
# One series per (served name, reward model) pairing, set from start-up on and on every change
# (server/rerankers.py): a pairing that makes Best-of-N no better than one sample shows here.
RERANK_GAP_CAPTURED = Gauge(
    "bonserve_rerank_gap_captured",
    "Recorded held-out share of the oracle gap the reward model captures on the policy (NaN: "
    "never evaluated). <= 0: Best-of-N with it is no better than one sample.",
    ["policy", "reward_model"],
)
RERANK_ALLOWED = Gauge(
    "bonserve_rerank_allowed",
    "1 when the rerank gate allows the pairing (gap captured > 0, or never evaluated), else 0.",
    ["policy", "reward_model"],
)
RERANK_FORCED = Gauge(
    "bonserve_rerank_forced",
    "1 when the pairing reranks although the gate refuses it (promotion force, or "
    "--allow-unhelpful-reward-model).",
    ["policy", "reward_model"],
)
IN_FLIGHT = Gauge("bonserve_requests_in_flight", "Requests holding an engine slot.")
WAITING = Gauge("bonserve_requests_waiting", "Requests queued for an engine slot.")


# --------------------------------------------------------------------------- cost clock


class ShareClock:
    """Integrates 1/N(t) over time, N = requests in the engine (see the cost model above).

    A request reads the clock when it enters and when it leaves; the difference is its
    share of the engine's busy time.
    """

    def __init__(self) -> None:
        self._value = 0.0
        self._n = 0
        self._last = time.monotonic()

    def _advance(self) -> float:
        now = time.monotonic()
        if self._n:
            self._value += (now - self._last) / self._n
        self._last = now
        return self._value

    def enter(self) -> float:
        start = self._advance()
        self._n += 1
        return start

    def leave(self, start: float) -> float:
        end = self._advance()
        self._n -= 1
        return end - start


# --------------------------------------------------------------------------- vLLM series


class EngineMetrics(Collector):
    """Exports the `vllm:*` collectors of every engine in this process.

    vLLM's PrometheusStatLogger unregisters all `vllm:*` collectors from the global
    registry when an engine is created, so with two engines (policy + reward) only the last
    one's series would survive. After each engine is built, `adopt` moves its collectors
    here; `collect` merges same-named families (engines differ by their `model_name` label).
    """

    def __init__(self) -> None:
        self._engines: dict[str, list[Collector]] = {}

    def adopt(self, engine: str) -> None:
        ours = [
            c for c in list(REGISTRY._collector_to_names) if str(getattr(c, "_name", "")).startswith("vllm:")
        ]
        for collector in ours:
            REGISTRY.unregister(collector)
        self._engines[engine] = ours

    def rename(self, engine: str, name: str) -> None:
        """Key an engine's series by its new name (their `model_name` label is vLLM's own,
        fixed when the engine was built)."""
        if engine in self._engines:
            self._engines[name] = self._engines.pop(engine)

    def drop(self, engine: str) -> None:
        """Forget a stopped engine's series."""
        self._engines.pop(engine, None)

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for collectors in self._engines.values():
            for collector in collectors:
                for family in collector.collect():
                    merged = families.get(family.name)
                    if merged is None:
                        merged = Metric(family.name, family.documentation, family.type, family.unit)
                        families[family.name] = merged
                    merged.samples.extend(family.samples)
        yield from families.values()


ENGINE_METRICS = EngineMetrics()
REGISTRY.register(ENGINE_METRICS)


def metric_names() -> Iterable[str]:
    """Every series name /metrics can expose (for dashboard/alert consistency checks)."""
    for collector in list(REGISTRY._collector_to_names):
        yield from REGISTRY._collector_to_names[collector]
