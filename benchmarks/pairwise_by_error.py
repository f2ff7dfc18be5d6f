"""A reward model's pairwise accuracy on an arithmetic policy's samples, split by the kind of mistake.

    .venv/bin/python benchmarks/pairwise_by_error.py \\
        --samples docs/benchmarks/bon_pays_ppo/split/val.samples.jsonl \\
        --scores docs/benchmarks/bon_pays_ppo/rm_recipes/per_prompt.jsonl \\
                 docs/benchmarks/bon_pays_transplant/rm_recipes/per_prompt.jsonl

Every (right, wrong) pair of distinct replies of one prompt, as benchmarks/rm_recipes.py pairs
them; the wrong reply's kind: `carry` (it states a sum off by exactly 10), `near` (off by 1-9),
`far` (off by more, or not 10), `form` (no `a + b = r` sum at all: a bare number, prose).
A reward model that checks the sum ranks `carry` pairs as well as `far` ones; one that reads
the reply's form ranks `form` pairs and little else. Prints JSON: per reward model and kind,
pairs, accuracy (a tie is a miss) and its 95% interval; `all` reproduces rm_recipes.py's
pairwise accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from pathlib import Path

SUM = re.compile(r"(\d+)\s*\+\s*(\d+)\s*(?:=|equals)\s*(-?\d+)")


def kind(wrong: str, right: str) -> str:
    """The kind of mistake `wrong` makes, measured against the right reply's sum."""
    found, truth = SUM.search(wrong), SUM.search(right)
    if found is None or truth is None:
        return "form"
    off = abs(int(found.group(3)) - int(truth.group(3)))
    if off == 10:
        return "carry"
    return "near" if 0 < off < 10 else "far"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", required=True, help="val.samples.jsonl: every sample and its gold score.")
    ap.add_argument("--scores", nargs="+", required=True, help="rm_recipes per_prompt.jsonl files.")
    args = ap.parse_args()

    samples = {row["id"]: row for row in map(json.loads, Path(args.samples).read_text().splitlines())}
    rewards: dict[str, dict[str, list[float]]] = defaultdict(dict)  # model -> prompt id -> scores
    for path in args.scores:
        for row in map(json.loads, Path(path).read_text().splitlines()):
            for model, scores in row["rewards"].items():
                rewards[model][row["id"]] = scores

    out: dict[str, dict[str, dict[str, float]]] = {}
    for model, by_prompt in rewards.items():
        hits: dict[str, list[float]] = defaultdict(list)
        for pid, scores in by_prompt.items():
            texts, gold = samples[pid]["samples"], samples[pid]["gold"]
            seen = set()
            for i, (ti, gi) in enumerate(zip(texts, gold, strict=True)):
                for j, (tj, gj) in enumerate(zip(texts, gold, strict=True)):
                    if gi != 1.0 or gj != 0.0 or (ti, tj) in seen or not tj.strip():
                        continue
                    seen.add((ti, tj))
                    hit = 1.0 if scores[i] > scores[j] else 0.0  # a tie is a miss, as in rm_recipes.py
                    hits[kind(tj, ti)].append(hit)
                    hits["all"].append(hit)
        out[model] = {
            k: {
                "pairs": len(v),
                "accuracy": sum(v) / len(v),
                "ci95": 1.96 * math.sqrt(max(sum(v) / len(v) * (1 - sum(v) / len(v)), 1e-12) / len(v)),
            }
            for k, v in sorted(hits.items())
        }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
