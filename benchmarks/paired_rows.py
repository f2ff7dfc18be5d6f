"""Paired differences between rows of a `bonserve loadtest compare` report: every row answers
the same prompts, so row A minus row B per prompt has a much tighter interval than the two
rows' own intervals suggest.

    .venv/bin/python benchmarks/paired_rows.py docs/benchmarks/bon_vs_tuned_refreshed/report.json \\
        "smollm2-135m-instruct best_of=8 T=0.4" "smollm2-135m-instruct best_of=1 T=0" ...

Arguments after the report come in pairs (A, B): each prints mean(A - B) over the prompts both
rows answered, with its 95% interval, and writes them as JSON with --out.

The report may also be a directory of `bonserve eval --out` reports: the labels are then their
names (NAME.json), and a row's per-prompt quality is its greedy gold reward (NAME.prompts.jsonl).

    .venv/bin/python benchmarks/paired_rows.py docs/benchmarks/ppo_rm_onpolicy \
        eval-ppo-rm-ppo-mix-frozen-kl eval-ppo-rm-ppo-mix-batch-kl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.eval import ci95  # noqa: E402


def per_prompt(row: dict) -> dict[int | str, float]:
    return {r["prompt_index"]: float(r["quality"]) for r in row["requests"] if r.get("quality") is not None}


def eval_rows(directory: Path, labels: list[str]) -> dict[str, dict]:
    """`bonserve eval` reports as rows: each prompt's greedy gold reward is its quality."""
    rows = {}
    for label in labels:
        lines = (directory / f"{label}.prompts.jsonl").read_text().splitlines()
        prompts = [json.loads(line) for line in lines if line]
        requests = [{"prompt_index": p["id"], "quality": p["greedy_gold"]} for p in prompts]
        rows[label] = {"label": label, "requests": requests}
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("pairs", nargs="+", help="Row labels, in (A, B) pairs.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("row labels come in (A, B) pairs")
    if args.report.is_dir():
        rows = eval_rows(args.report, args.pairs)
    else:
        rows = {row["label"]: row for row in json.loads(args.report.read_text())["rows"]}
    results = []
    for a, b in zip(args.pairs[::2], args.pairs[1::2], strict=True):
        qa, qb = per_prompt(rows[a]), per_prompt(rows[b])
        common = sorted(qa.keys() & qb.keys())
        diffs = [qa[i] - qb[i] for i in common]
        mean = sum(diffs) / len(diffs)
        results.append({"a": a, "b": b, "prompts": len(common), "diff": mean, "ci95": ci95(diffs)})
        print(f"{a}  -  {b}: {mean:+.3f} ± {ci95(diffs):.3f} ({len(common)} prompts)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
