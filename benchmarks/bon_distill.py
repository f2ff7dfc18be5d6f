"""Best-of-N distillation against what it distils: the distilled policy's greedy answer vs the
source policy's greedy answer and its Best-of-N pick, paired per held-out prompt.

    python benchmarks/bon_distill.py \
        --source docs/benchmarks/bon_pays_t04/eval-base-bon8.json \
        --distilled docs/benchmarks/bon_pays_t04/eval-distilled-greedy.json \
        --out docs/benchmarks/bon_pays_t04/distill_summary.json

Both files are `bonserve eval --out` reports on the same prompts: the source with `--n N
--reward-model RM` (its BoN-N pick by reward), the distilled model greedy. Reads their
per-prompt files (X.prompts.jsonl) and prints each accuracy and the paired differences with
95% intervals (normal approximation over per-prompt differences).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from training.eval import ci95


def outcomes(report: Path) -> dict[str, dict]:
    rows = report.with_suffix(".prompts.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, filter(None, rows))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, required=True, help="eval report of the source policy, with --n"
    )
    parser.add_argument(
        "--distilled", type=Path, required=True, help="greedy eval report of the distilled one"
    )
    parser.add_argument("--selector", default="reward", help="the source's pick to compare against")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    src, dst = outcomes(args.source), outcomes(args.distilled)
    if src.keys() != dst.keys():
        raise SystemExit("the two evals saw different prompts")
    ids = sorted(src)
    greedy = [float(src[i]["greedy_gold"] == 1.0) for i in ids]
    bon = [float(src[i]["gold"][src[i]["picks"][args.selector]] == 1.0) for i in ids]
    distilled = [float(dst[i]["greedy_gold"] == 1.0) for i in ids]
    vs_greedy = [d - g for d, g in zip(distilled, greedy, strict=True)]
    vs_bon = [d - b for d, b in zip(distilled, bon, strict=True)]
    rows = {
        "prompts": len(ids),
        "source_greedy": statistics.fmean(greedy),
        "source_bon": statistics.fmean(bon),
        "distilled_greedy": statistics.fmean(distilled),
        "distilled_ci95": ci95(distilled),
        "distilled_minus_source_greedy": statistics.fmean(vs_greedy),
        "distilled_minus_source_greedy_ci95": ci95(vs_greedy),
        "distilled_minus_source_bon": statistics.fmean(vs_bon),
        "distilled_minus_source_bon_ci95": ci95(vs_bon),
    }
    print(
        f"prompts {len(ids)}; source greedy {rows['source_greedy']:.3f}, source BoN ({args.selector}) "
        f"{rows['source_bon']:.3f}, distilled greedy {rows['distilled_greedy']:.3f} "
        f"± {rows['distilled_ci95']:.3f}"
    )
    print(
        f"distilled - source greedy {rows['distilled_minus_source_greedy']:+.3f} ± "
        f"{rows['distilled_minus_source_greedy_ci95']:.3f}"
    )
    print(
        f"distilled - source BoN    {rows['distilled_minus_source_bon']:+.3f} "
        f"± {rows['distilled_minus_source_bon_ci95']:.3f}"
    )
    if args.out:
        args.out.write_text(
            json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, **rows}, indent=2)
        )


if __name__ == "__main__":
    main()
