"""The server endpoints a load test reads besides chat: models, admin load, /metrics, rewards."""

from __future__ import annotations

import math
from collections.abc import Sequence

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtests.config import LoadTestConfig

# Counters whose deltas over a run cross-check the per-request usage (server/metrics.py).
COST_COUNTERS = ("bonserve_estimated_cost_dollars", "bonserve_engine_seconds")


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def ensure_models(cfg: LoadTestConfig, models: Sequence[str]) -> None:
    """Fail early, naming what is served, if a model is missing; with `load_models`, ask the
    server to load it from its registry first."""
    async with httpx.AsyncClient(timeout=600) as http:
        r = await http.get(cfg.v1_url + "/models", headers=_auth(cfg.key))
        r.raise_for_status()
        served = {m["id"] for m in r.json()["data"]}
        for name in dict.fromkeys(models):
            if name in served:
                continue
            if not cfg.load_models:
                raise RuntimeError(
                    f"the server does not serve {name!r} (it serves "
                    f"{', '.join(sorted(served))}); load it with POST "
                    "/admin/models/load or pass --load-models"
                )
            r = await http.post(
                cfg.root_url + "/admin/models/load", json={"model": name}, headers=_auth(cfg.admin_key)
            )
            if r.status_code != 200:
                raise RuntimeError(f"loading {name!r} failed: {r.status_code} {r.text[:300]}")


async def counter_totals(cfg: LoadTestConfig) -> dict[str, float]:
    """Sum over all label sets of each cost counter on /metrics (NaN if not exported)."""
    totals = dict.fromkeys(COST_COUNTERS, math.nan)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.get(cfg.root_url + "/metrics")
        r.raise_for_status()
    except httpx.HTTPError:
        return totals
    for family in text_string_to_metric_families(r.text):
        if family.name in totals:
            totals[family.name] = sum(s.value for s in family.samples if s.name.endswith("_total"))
    return totals


async def reward_scores(
    cfg: LoadTestConfig, items: Sequence[tuple[list[dict[str, str]], str]]
) -> list[float] | None:
    """Scores of (messages, response) pairs by the server's reward model (POST /v1/rewards),
    or None when the server has none."""
    scores: list[float] = []
    async with httpx.AsyncClient(timeout=600) as http:
        for i in range(0, len(items), 64):  # the endpoint takes at most 64 items
            batch = [{"messages": m, "response": text} for m, text in items[i : i + 64]]
            r = await http.post(cfg.v1_url + "/rewards", json={"items": batch}, headers=_auth(cfg.key))
            if r.status_code in (400, 404, 405):
                return None
            r.raise_for_status()
            scores.extend(d["reward"] for d in sorted(r.json()["data"], key=lambda d: d["index"]))
    return scores
