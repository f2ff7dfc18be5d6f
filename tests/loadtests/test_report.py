"""Pareto frontier, the Markdown report and its files, on hand-made rows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from loadtests.report import cost_axis, pareto_front, to_markdown, write_report
from loadtests.stats import request_metrics
from tests.loadtests.test_stats import ok


def test_pareto_front_minimises_x_and_maximises_y() -> None:
    xs = [1.0, 2.0, 3.0, 2.0, 4.0, math.nan]
    ys = [0.2, 0.5, 0.5, 0.4, 0.9, 1.0]
    # (3, .5) is dominated by (2, .5); (2, .4) by (2, .5); NaN is never on the front
    assert pareto_front(xs, ys) == [True, True, False, False, True, False]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [True, True]  # equal points both stay
    assert pareto_front([], []) == []


def row(
    model: str, best_of: int, latency: float, quality: float, cost: float, oracle: float | None = None
) -> dict[str, Any]:
    r: dict[str, Any] = {
        "model": model,
        "best_of": best_of,
        "temperature": 0.8,
        "label": f"{model} best_of={best_of} T=0.8",
        "quality": quality,
        "quality_ci95": 0.05,
        "quality_source": "gold:arithmetic",
        **request_metrics([ok(latency / 2, latency, 8, 8 * best_of, [])], 1.0),
    }
    r["e2el_ms_p50"] = latency * 1000
    r["cost_usd_per_request"] = cost
    if oracle is not None:
        r["oracle"] = oracle
    return r


SETTINGS = {
    "base_url": "http://127.0.0.1:8000/v1",
    "task": "arithmetic",
    "split": "heldout",
    "num_requests": 8,
    "request_rate": math.inf,
    "burstiness": 1.0,
    "concurrency": 4,
    "max_tokens": 64,
    "seed": 0,
    "warmup_requests": 2,
    "goodput": {"e2el": 2000},
    "duration_s": None,
}


def test_report_files_and_markdown(tmp_path: Path) -> None:
    rows = [
        row("base", 1, 0.5, 0.27, 0.001),
        row("base", 8, 2.0, 0.30, 0.004, oracle=0.4),
        row("dpo", 1, 0.5, 0.58, 0.001),
    ]
    report = {"title": "t", "generated_at": "now", "settings": SETTINGS, "rows": rows}
    paths = write_report(report, tmp_path)
    assert {p.name for p in paths} == {
        "report.json",
        "report.md",
        "quality_vs_latency.png",
        "quality_vs_cost.png",
    }
    assert all(p.stat().st_size > 0 for p in paths)
    assert (tmp_path / "quality_vs_cost.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((tmp_path / "report.json").read_text())  # strict JSON: no NaN/Infinity
    assert data["settings"]["request_rate"] == "inf"
    # dpo n=1 dominates base n=1 (same latency, better) and base BoN-8 (faster, cheaper, better)
    assert [r["pareto_latency"] for r in data["rows"]] == [False, False, True]
    assert [r["pareto_cost"] for r in data["rows"]] == [False, False, True]
    md = (tmp_path / "report.md").read_text()
    assert "| base best_of=8 T=0.8 | 1 | 0.3 ± 0.05 | 0.4 |" in md
    assert "gold verifier of task `arithmetic`" in md
    assert "![quality_vs_latency](quality_vs_latency.png)" in md
    assert "e2el ≤ 2000" in md


def test_without_a_price_cost_falls_back_to_engine_seconds() -> None:
    rows = [row("base", 1, 0.5, 0.27, 0.0)]
    assert cost_axis(rows)[0] == "engine_seconds_per_request"
    md = to_markdown({"settings": SETTINGS, "rows": rows})
    assert "no price" in md
