"""Turn report rows into report.json, report.md and the quality-vs-latency / quality-vs-cost
plots, with the Pareto frontier marked (a row is on it when no other row is at least as good
on both axes and better on one)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LATENCY_KEY = "e2el_ms_p50"
METHOD = """\
- **TTFT** is the time to the first chunk that delivers content (bonserve streams a Best-of-N
  answer only once every candidate was decoded and scored, so BoN TTFT includes all of it).
  **TPOT** = (E2EL - TTFT) / (delivered tokens - 1) and **ITL** = gaps between content chunks,
  as `vllm bench serve` defines them; a BoN answer arrives in one chunk, so its TPOT/ITL are
  near zero and its E2EL is the number to compare. **E2EL** = send to end of stream.
- **Throughput** counts completed requests and *delivered* tokens per second of the measured
  phase (first send to last completion); *decoded* tokens include every BoN candidate.
  **Goodput** = requests per second meeting every SLO given (vLLM's `--goodput` semantics).
- **Quality** = mean over delivered answers of {quality_source}; ± is a 95% normal interval.
- **Oracle** (BoN rows) = the ceiling of a perfect reranker on the same policy and
  temperature: per prompt, m unranked candidates from one non-streamed request (`n=m`,
  `best_of=m`), scored by the gold verifier; the expected best of best_of of them (unbiased
  pass@k for 0/1 rewards) averaged over prompts.
- **Cost** comes from the server's cost model (`usage.bonserve`): each request is attributed
  the replica-seconds it shared the engine (∫ 1/N(t) dt), times the replica price the server
  was started with (`--accelerator-price-per-hour`); per 1k *delivered* tokens.
- **Pareto**: no other row has higher-or-equal quality at lower-or-equal p50 E2EL (resp. cost)."""


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[bool]:
    """Which points are Pareto-optimal for minimising x and maximising y (NaN: never)."""

    def valid(i: int) -> bool:
        return not (math.isnan(xs[i]) or math.isnan(ys[i]))

    def dominated(i: int) -> bool:
        return any(
            valid(j) and xs[j] <= xs[i] and ys[j] >= ys[i] and (xs[j] < xs[i] or ys[j] > ys[i])
            for j in range(len(xs))
        )

    return [valid(i) and not dominated(i) for i in range(len(xs))]


def cost_axis(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """Dollars per request when the server has a price, else attributed engine-seconds."""
    dollars = [r.get("cost_usd_per_request", math.nan) for r in rows]
    if dollars and all(math.isfinite(d) for d in dollars) and any(d > 0 for d in dollars):
        return "cost_usd_per_request", "cost per request (USD, server cost model)"
    return "engine_seconds_per_request", "engine-seconds per request (server cost model)"


def mark_pareto(rows: list[dict[str, Any]]) -> None:
    """Add pareto_latency / pareto_cost flags to each row (by quality)."""
    quality = [_num(r.get("quality")) for r in rows]
    cost_key, _ = cost_axis(rows)
    for flag, key in (("pareto_latency", LATENCY_KEY), ("pareto_cost", cost_key)):
        for row, on in zip(rows, pareto_front([_num(r.get(key)) for r in rows], quality), strict=True):
            row[flag] = on


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _fmt(value: Any, digits: int = 3) -> str:
    v = _num(value)
    if math.isnan(v):
        return "–"
    if v != 0 and abs(v) < 10**-digits:
        return f"{v:.2e}"
    return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"


# --------------------------------------------------------------------------- markdown


def to_markdown(report: dict[str, Any]) -> str:
    rows, s = report["rows"], report["settings"]
    priced = cost_axis(rows)[0] == "cost_usd_per_request"  # else the $ columns are all zero

    def dollars(value: Any) -> str:
        return _fmt(value) if priced else "–"

    sources = sorted({r.get("quality_source") or "none" for r in rows})
    quality_source = {
        "reward_model": "the server's reward-model score",
        "none": "nothing (no task, no reward model: omitted)",
    }
    arrivals = (
        "closed loop"
        if math.isinf(_num(s["request_rate"]))
        else f"open loop, {s['request_rate']:g} req/s, gamma burstiness {s['burstiness']:g}"
    )
    prompts = (
        f"task `{s['task']}` ({s['split']} split)"
        if s.get("task")
        else f"`{s['prompts_file']}`"
        if s.get("prompts_file")
        else f"synthetic, ~{s['synthetic_input_len']} words"
    )
    in_flight = f"at most {s['concurrency']} in flight" if s["concurrency"] else "no in-flight cap"
    bound = f" (or {s['duration_s']:g} s)" if s.get("duration_s") else ""
    lines = [
        f"# {report.get('title', 'Load test report')}",
        "",
        f"Server `{s['base_url']}`, {report.get('generated_at', '')}. Prompts: {prompts}; "
        f"{s['num_requests']} measured requests per row{bound}, {arrivals}, {in_flight}, "
        f"max_tokens {s['max_tokens']}, seed {s['seed']} (same prompts and arrivals in every row), "
        f"warm-up requests excluded: {s['warmup_requests']}.",
        "",
        "| configuration | n | quality | oracle | p50 E2EL ms | p99 E2EL ms | p50 TTFT ms | req/s "
        "| delivered tok/s | goodput req/s | decoded/delivered | engine-s/req | $/req "
        "| $/1k delivered tok | errors | Pareto |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        quality = _fmt(r.get("quality"))
        if not math.isnan(_num(r.get("quality_ci95"))):
            quality += f" ± {_fmt(r['quality_ci95'], 2)}"
        pareto = ", ".join(
            name
            for name, flag in (("latency", r.get("pareto_latency")), ("cost", r.get("pareto_cost")))
            if flag
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    r["label"],
                    str(r["completed"]),
                    quality,
                    _fmt(r.get("oracle")),
                    _fmt(r["e2el_ms_p50"], 4),
                    _fmt(r["e2el_ms_p99"], 4),
                    _fmt(r["ttft_ms_p50"], 4),
                    _fmt(r["request_throughput"]),
                    _fmt(r["output_throughput"]),
                    _fmt(r.get("request_goodput")),
                    _fmt(r["decoded_per_delivered"]),
                    _fmt(r["engine_seconds_per_request"]),
                    dollars(r["cost_usd_per_request"]),
                    dollars(r["cost_usd_per_1k_delivered"]),
                    str(r["errors"]),
                    pareto or "",
                ]
            )
            + " |"
        )
    if s.get("goodput"):
        lines += ["", "Goodput SLOs (ms): " + ", ".join(f"{k} ≤ {v:g}" for k, v in s["goodput"].items())]
    lines += [
        "",
        "Latency detail (ms): mean / p50 / p90 / p99.",
        "",
        "| configuration | TTFT | TPOT | ITL | E2EL |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            " / ".join(_fmt(r[f"{m}_ms_{q}"], 4) for q in ("mean", "p50", "p90", "p99"))
            for m in ("ttft", "tpot", "itl", "e2el")
        ]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    errors = [(r["label"], e) for r in rows for e in r.get("error_examples", [])]
    if errors:
        lines += ["", "Errors (examples):", *(f"- {label}: `{e}`" for label, e in errors)]
    plots = report.get("plots", [])
    if plots:
        lines += ["", *(f"![{Path(p).stem}]({Path(p).name})" for p in plots)]
    lines += [
        "",
        "## How the numbers are made",
        "",
        METHOD.format(
            quality_source=" and ".join(
                quality_source.get(
                    q, f"the gold verifier of task `{q.split(':', 1)[-1]}` (1 correct, 0 wrong)"
                )
                for q in sources
            )
        ),
    ]
    if not priced:
        lines += [
            "",
            "The server reported no price (`--accelerator-price-per-hour` unset), so cost "
            "is shown in attributed engine-seconds only.",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def plot_tradeoff(rows: Sequence[dict[str, Any]], x_key: str, x_label: str, flag: str, path: Path) -> Path:
    """Quality (y) against x for every row: Pareto frontier as a step line, and for BoN rows
    the oracle ceiling as a hollow marker above the point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    models = list(dict.fromkeys(r["model"] for r in rows))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    for r in rows:
        x, y = _num(r.get(x_key)), _num(r.get("quality"))
        if math.isnan(x) or math.isnan(y):
            continue
        ax.scatter(
            [x],
            [y],
            s=30 + 12 * r["best_of"],
            color=colors[r["model"]],
            edgecolor="black" if r.get(flag) else "none",
            linewidth=1.5,
            zorder=3,
        )
        ax.annotate(
            f"bo{r['best_of']} T{r['temperature']:g}",
            (x, y),
            textcoords="offset points",
            xytext=(6, -10),
            fontsize=8,
        )
        oracle = _num(r.get("oracle"))
        if not math.isnan(oracle):
            ax.plot([x, x], [y, oracle], linestyle=":", color=colors[r["model"]], zorder=2)
            ax.scatter(
                [x], [oracle], s=40, facecolor="none", edgecolor=colors[r["model"]], marker="^", zorder=3
            )
    front = sorted((_num(r[x_key]), _num(r["quality"])) for r in rows if r.get(flag))
    if front:
        ax.step(*zip(*front, strict=True), where="post", color="black", linewidth=1, alpha=0.6)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colors[m], label=m) for m in models]
    handles += [
        plt.Line2D([], [], color="black", alpha=0.6, label="Pareto frontier (outlined)"),
        plt.Line2D(
            [],
            [],
            marker="^",
            linestyle=":",
            color="grey",
            markerfacecolor="none",
            label="oracle ceiling of the BoN row",
        ),
    ]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel(x_label)
    ax.set_ylabel("quality (mean over delivered answers)")
    ax.set_title(
        f"Quality vs {x_label.split(' (')[0]} — up and left is better; marker size = best_of", fontsize=10
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """report.json, report.md, and the two plots when rows have a quality. Returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    rows = report["rows"]
    mark_pareto(rows)
    report["plots"] = []
    if any(not math.isnan(_num(r.get("quality"))) for r in rows):
        cost_key, cost_label = cost_axis(rows)
        report["plots"] = [
            str(
                plot_tradeoff(
                    rows,
                    LATENCY_KEY,
                    "p50 end-to-end latency (ms)",
                    "pareto_latency",
                    out / "quality_vs_latency.png",
                )
            ),
            str(plot_tradeoff(rows, cost_key, cost_label, "pareto_cost", out / "quality_vs_cost.png")),
        ]
    (out / "report.json").write_text(json.dumps(json_safe(report), indent=2, default=str))
    (out / "report.md").write_text(to_markdown(report))
    return [out / "report.json", out / "report.md", *map(Path, report["plots"])]


def json_safe(value: Any) -> Any:
    """NaN -> null and infinities -> "inf" (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
