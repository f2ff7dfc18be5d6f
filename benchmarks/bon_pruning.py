"""What pruned Best-of-N and adaptive N buy: gold quality against decode tokens, latency, cost.

    .venv/bin/python benchmarks/bon_pruning.py --policy smollm2-135m-instruct \\
        --reward-model rm-base-t04-long --temperature 0.4 --prompts 200 --max-tokens 48 \\
        --concurrency 4 --out docs/benchmarks/bon_pruning_hold

One `bonserve serve` on 127.0.0.1 (the policy, and the reward model co-located) answers the
same held-out arithmetic prompts (training.tasks "arithmetic", split "heldout") in each row:
full BoN-8, pruned BoN-8 at several schedules in both checkpoint modes ("overlap": decode on
while the partial answers are scored; "hold": stop at the checkpoint, resume the survivors),
BoN-16 pruned to about BoN-8's decode budget (half the candidates aborted after 4 tokens:
16*4 + 8*(L-4) ~ 8L) and to under it (three quarters aborted), "margin" rows (at the
checkpoint, abort the running candidates whose partial reward is below the best finished
one's: `bon_prune_margin`), and threshold mode (BoN-8 that stops once a finished candidate
reaches the median chosen reward of the full BoN-8 row).
`--rows` picks a subset (full-8 always runs: the ratios and the threshold come from it).
Every request uses the same seed per prompt, so rows differ only by what they prune. Columns:
gold quality (task.reward of the returned answer) with its 95% interval, decoded tokens per
request (usage.completion_tokens: every decoded token, pruned prefixes included), p50/p99
latency, $/request (usage.bonserve.estimated_cost_usd), and ratios to full BoN-8. Writes
results.json, requests.jsonl and report.md under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.servers import start_bonserve  # noqa: E402
from training.tasks import get_task  # noqa: E402


# name -> request extras; "threshold" rows get their value from the full BoN-8 row. "hold" rows stop
# every candidate at the checkpoint while the reward model scores and resume the survivors;
# "overlap" rows decode on meanwhile and abort the pruned ones mid-flight.
def _prune(best_of: int, at: list[int], fraction: float, mode: str) -> dict[str, Any]:
    return {"best_of": best_of, "bon_prune_at": at, "bon_prune_fraction": fraction, "bon_prune_mode": mode}


def _margin(best_of: int, at: list[int], margin: float, mode: str, fraction: float = 0.0) -> dict[str, Any]:
    """Pruning against the finished candidates: at the checkpoint, abort the running ones whose
    partial reward is more than `margin` below the best finished one (and `fraction` of them)."""
    return {**_prune(best_of, at, fraction, mode), "bon_prune_margin": margin}


ROWS: dict[str, dict[str, Any]] = {
    "full-8": {"best_of": 8},
    "overlap-8 @4 x0.5": _prune(8, [4], 0.5, "overlap"),
    "overlap-8 @4+8 x0.5": _prune(8, [4, 8], 0.5, "overlap"),
    "overlap-8 @8 x0.75": _prune(8, [8], 0.75, "overlap"),
    "overlap-8 @4 x0.75": _prune(8, [4], 0.75, "overlap"),
    "overlap-16 @4 x0.5 (BoN-8 budget)": _prune(16, [4], 0.5, "overlap"),
    "overlap-16 @4 x0.75 (under BoN-8 budget)": _prune(16, [4], 0.75, "overlap"),
    "hold-8 @4 x0.5": _prune(8, [4], 0.5, "hold"),
    "hold-8 @4 x0.75": _prune(8, [4], 0.75, "hold"),
    "hold-8 @8 x0.75": _prune(8, [8], 0.75, "hold"),
    "hold-8 @4+12 x0.5": _prune(8, [4, 12], 0.5, "hold"),
    "hold-16 @4 x0.75 (under BoN-8 budget)": _prune(16, [4], 0.75, "hold"),
    "hold-16 @8 x0.75 (under BoN-8 budget)": _prune(16, [8], 0.75, "hold"),
    "hold-8 @12 margin 0": _margin(8, [12], 0.0, "hold"),
    "hold-8 @16 margin 0": _margin(8, [16], 0.0, "hold"),
    "hold-8 @12 x0.5 margin 0": _margin(8, [12], 0.0, "hold", fraction=0.5),
    "hold-8 @8+12 x0.5 margin 0": _margin(8, [8, 12], 0.0, "hold", fraction=0.5),
    "overlap-8 @12 margin 0": _margin(8, [12], 0.0, "overlap"),
    "hold-16 @12 x0.5 margin 0": _margin(16, [12], 0.0, "hold", fraction=0.5),
    "threshold-8": {"best_of": 8},
    "hold-8 @12 x0.5 margin 0 + threshold": _margin(8, [12], 0.0, "hold", fraction=0.5),
    "hold-8 @12 x0.75 margin 0 + threshold": _margin(8, [12], 0.0, "hold", fraction=0.75),
    "hold-8 @10 x0.5 margin 0 + threshold": _margin(8, [10], 0.0, "hold", fraction=0.5),
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal 95% interval."""
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, half


async def run_row(
    url: str, model: str, examples: list[Any], extras: dict[str, Any], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """One request per example (seeded by its position), `args.concurrency` in flight; stops
    issuing new ones after `args.max_time_s`."""
    task = get_task("arithmetic")
    sem = asyncio.Semaphore(args.concurrency)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []

    async def one(client: httpx.AsyncClient, i: int, ex: Any) -> None:
        async with sem:
            if time.perf_counter() - started > args.max_time_s:
                return
            body = {"model": model, "messages": task.messages(ex), "max_tokens": args.max_tokens}
            body |= {"temperature": args.temperature, "seed": 1000 + i, **extras}
            t0 = time.perf_counter()
            r = await client.post("/v1/chat/completions", json=body)
            latency = time.perf_counter() - t0
            r.raise_for_status()
            out = r.json()
            text = out["choices"][0]["message"]["content"]
            usage = out["usage"]
            rows.append(
                {
                    "example": ex.id,
                    "gold": task.reward(ex, text),
                    "reward": out["choices"][0].get("reward"),
                    "latency_s": latency,
                    "decoded_tokens": usage["completion_tokens"],
                    "cost_usd": usage["bonserve"].get("estimated_cost_usd") or 0.0,
                    "bonserve": usage["bonserve"],
                }
            )

    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        await asyncio.gather(*(one(client, i, ex) for i, ex in enumerate(examples)))
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    gold, half = interval([r["gold"] for r in rows])
    latency = [r["latency_s"] for r in rows]
    return {
        "requests": len(rows),
        "gold": gold,
        "gold_ci95": half,
        "decoded_tokens": statistics.fmean(r["decoded_tokens"] for r in rows),
        "latency_p50_s": percentile(latency, 0.5),
        "latency_p99_s": percentile(latency, 0.99),
        "cost_usd": statistics.fmean(r["cost_usd"] for r in rows),
        "pruned": sum(r["bonserve"].get("candidates_pruned") or 0 for r in rows),
        "stopped": sum(r["bonserve"].get("candidates_stopped") or 0 for r in rows),
        "resumed_prompt_tokens": statistics.fmean(
            r["bonserve"].get("resumed_prompt_tokens") or 0 for r in rows
        ),
        # what the server says reranked (usage.bonserve.reward_model), not what was asked for
        "reward_models": sorted({str(r["bonserve"].get("reward_model")) for r in rows}),
    }


def report_md(summary: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    base = summary["full-8"]
    used = sorted({m for row in summary.values() for m in row["reward_models"]})
    lines = [
        "# Pruned Best-of-N and adaptive N",
        "",
        f"`python benchmarks/bon_pruning.py {' '.join(sys.argv[1:])}`: policy `{args.policy}`, reward "
        f"model `{args.reward_model}`, {args.prompts} held-out arithmetic prompts, max_tokens "
        f"{args.max_tokens}, temperature {args.temperature}, concurrency {args.concurrency}. "
        "Reranked by (the responses' "
        f"`usage.bonserve.reward_model`): {', '.join(used)}.",
        "",
        "| row | gold ±95% | decoded tok/req | p50 s | p99 s | $/req | tokens vs full-8 | p50 vs full-8 "
        "| $ vs full-8 | pruned | stopped | resumed prefill tok/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['gold']:.3f} ± {s['gold_ci95']:.3f} | {s['decoded_tokens']:.0f} "
            f"| {s['latency_p50_s']:.2f} | {s['latency_p99_s']:.2f} | {s['cost_usd']:.2e} "
            f"| {s['decoded_tokens'] / base['decoded_tokens']:.2f} "
            f"| {s['latency_p50_s'] / base['latency_p50_s']:.2f} "
            f"| {s['cost_usd'] / base['cost_usd'] if base['cost_usd'] else float('nan'):.2f} "
            f"| {s['pruned']} | {s['stopped']} | {s['resumed_prompt_tokens']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="Registry entry of the policy.")
    parser.add_argument("--reward-model", required=True, help="Registry entry of the reward model.")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="Sampling temperature (the reward model's own)."
    )
    parser.add_argument("--max-time-s", type=float, default=1800, help="Per row: no new requests after.")
    parser.add_argument(
        "--price-per-hour", type=float, default=1.0, help="Replica price the server's cost model bills."
    )
    parser.add_argument("--registry", type=Path, default=None)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="Rows to run.")
    parser.add_argument(
        "--out", type=Path, default=None, help="Folder for results.json, requests.jsonl, report.md."
    )
    args = parser.parse_args()

    examples = get_task("arithmetic").examples("heldout", args.prompts)
    work = Path(tempfile.mkdtemp(prefix="bench-bon-pruning-"))
    # --reward-models pins the pairing: a reward model whose manifest says it was trained for
    # the policy would otherwise rerank it instead of --reward-model (server/rerankers.py)
    flags = ["--model", args.policy, "--reward-model", args.reward_model, "--enforce-eager"]
    flags += ["--reward-models", f"{args.policy}={args.reward_model}"]
    flags += ["--accelerator-price-per-hour", str(args.price_per_hour)]
    if args.registry is not None:
        flags += ["--registry", str(args.registry)]
    server = start_bonserve(work, *flags)
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        asyncio.run(run_row(server.base_url, args.policy, examples[:2], {"best_of": 2}, args))  # warm-up
        selected = {name: ROWS[name] for name in ROWS if name == "full-8" or name in args.rows}
        for name, extras in selected.items():
            if name == "threshold-8" or name.endswith("+ threshold"):
                chosen = [r["reward"] for r in results["full-8"] if r["reward"] is not None]
                extras = {**extras, "bon_reward_threshold": statistics.median(chosen)}
            results[name] = asyncio.run(run_row(server.base_url, args.policy, examples, extras, args))
            s = summarise(results[name])
            print(
                f"{name:<34} gold {s['gold']:.3f} ± {s['gold_ci95']:.3f}  tokens {s['decoded_tokens']:.0f}"
                f"  p50 {s['latency_p50_s']:.2f}s  p99 {s['latency_p99_s']:.2f}s",
                flush=True,
            )
    finally:
        server.stop()

    summary = {name: summarise(rows) for name, rows in results.items()}
    report: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": "python benchmarks/bon_pruning.py " + " ".join(sys.argv[1:]),
        "rows": {name: {**ROWS[name]} for name in results},
        "summary": summary,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        with (args.out / "requests.jsonl").open("w") as f:
            for name, rows in results.items():
                for r in rows:
                    f.write(json.dumps({"row": name, **r}) + "\n")
        (args.out / "report.md").write_text(report_md(summary, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
