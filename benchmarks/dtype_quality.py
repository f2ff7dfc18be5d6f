"""Does bfloat16 change answer quality? Greedy held-out eval of each policy in both dtypes.

    python benchmarks/dtype_quality.py --models smollm2-135m-instruct arith-sft-v2-merged \
        --out docs/benchmarks/dtype_quality

For every model, `bonserve eval` runs twice on the same held-out prompts, once with every
engine in float32 and once in bfloat16 (`BONSERVE_DTYPE`); an eval whose output file exists
is reused. Prints both greedy accuracies with their 95% intervals, the paired difference
bfloat16 - float32 with its 95% interval (per-prompt differences, normal approximation), and
the share of prompts whose greedy reply text changed. Writes summary.json beside the evals.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from training.eval import ci95

DTYPES = ("float32", "bfloat16")


def run_eval(model: str, dtype: str, out: Path, args: argparse.Namespace) -> None:
    if out.exists():
        print(f"reusing {out}", flush=True)
        return
    cmd = [sys.executable, "-m", "bonserve.cli", "eval", "--model", model, "--task", args.task]
    cmd += ["--max-tokens", str(args.max_tokens), "--no-kl", "--enforce-eager", "--out", str(out)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    print("+", f"BONSERVE_DTYPE={dtype}", *cmd, flush=True)
    subprocess.run(cmd, check=True, timeout=args.timeout_s, env={**os.environ, "BONSERVE_DTYPE": dtype})


def per_prompt(path: Path) -> dict[str, tuple[float, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["id"]: (float(r["greedy_gold"] == 1.0), r["greedy"]) for r in rows}


def compare(model: str, files: dict[str, Path]) -> dict[str, float | int | str]:
    a, b = (per_prompt(files[d].with_suffix(".prompts.jsonl")) for d in DTYPES)
    if a.keys() != b.keys():
        raise SystemExit(f"{model}: the two evals saw different prompts")
    ids = sorted(a)
    fp32 = [a[i][0] for i in ids]
    bf16 = [b[i][0] for i in ids]
    diff = [y - x for x, y in zip(fp32, bf16, strict=True)]
    for d in DTYPES:  # the eval's own record of the dtype its engines ran in
        recorded = json.loads(files[d].read_text())["engine_dtype"]
        if recorded != d:
            raise SystemExit(f"{files[d]}: engines ran in {recorded}, not {d}")
    return {
        "model": model,
        "prompts": len(ids),
        "float32": statistics.fmean(fp32),
        "float32_ci95": ci95(fp32),
        "bfloat16": statistics.fmean(bf16),
        "bfloat16_ci95": ci95(bf16),
        "bf16_minus_fp32": statistics.fmean(diff),
        "bf16_minus_fp32_ci95": ci95(diff),
        "changed_replies": sum(a[i][1] != b[i][1] for i in ids) / len(ids),
        "changed_verdicts": sum(d != 0 for d in diff) / len(ids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--limit", type=int, default=None, help="first N held-out prompts (default: all)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--timeout-s", type=float, default=1200, help="per eval")
    parser.add_argument("--out", type=Path, required=True, help="directory for the evals and summary.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    rows = []
    for model in args.models:
        files = {d: args.out / f"eval-{model}-{d}.json" for d in DTYPES}
        for d, path in files.items():
            run_eval(model, d, path, args)
        rows.append(compare(model, files))

    head = ("model", "prompts", "float32", "bfloat16", "bf16 - fp32", "replies changed")
    print(f"\n{head[0]:<24} {head[1]:>7} {head[2]:>14} {head[3]:>14} {head[4]:>15} {head[5]:>16}")
    for r in rows:
        print(
            f"{r['model']:<24} {r['prompts']:>7} {r['float32']:>7.3f} ± {r['float32_ci95']:.3f} "
            f"{r['bfloat16']:>7.3f} ± {r['bfloat16_ci95']:.3f} {r['bf16_minus_fp32']:>+8.3f} ± "
            f"{r['bf16_minus_fp32_ci95']:.3f} {r['changed_replies']:>16.2f}"
        )
    (args.out / "summary.json").write_text(
        json.dumps({"config": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
