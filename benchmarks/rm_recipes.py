"""Reward-model recipes compared on one policy's held-out samples, in one run.

    .venv/bin/python benchmarks/rm_recipes.py \\
        --samples docs/benchmarks/bon_pays/prefs-base-heldout.jsonl.samples.jsonl \\
        --reward-models rm-base-lora rm-base-full --n 8 --out docs/benchmarks/bon_pays/rm_recipes

The samples file is what `bonserve data prefs` writes beside its pairs (OUT.samples.jsonl:
per prompt, the k replies of the policy and their gold scores), so every reward model is
judged on the *same* replies of the policy it will rerank, drawn from held-out prompts. For
each reward model (scored by vLLM's pooling runner, the engine the server uses):

- pairwise accuracy over every (correct, wrong) combination of distinct non-empty replies,
  with a 95% interval (the target: >= 0.8);
- Best-of-n accuracy on the first n replies, the share of the oracle gap captured,
  (BoN - per-sample) / (pass@n - per-sample), and reward+majority (the vote, the reward
  model breaking ties and picking the representative);
beside the selectors that need no reward model (one sample, majority vote, pass@n).
Writes OUT/results.json, OUT/per_prompt.jsonl (every reward) and prints a markdown table.

Generative verifiers (kind verifier, training/verifier.py: they write their check out; the
score is log p(right) - log p(wrong) at the verdict) go in --reward-models too; --verifiers
also takes a full SFT entry trained on verifier rows.
--samples may also be the OUT.prompts.jsonl that `bonserve eval --n` writes (held-out prompts,
the greedy reply's gold beside the samples): then each model's Best-of-n minus greedy, paired
per prompt, is reported too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.registry import Registry  # noqa: E402
from training.eval import answer_parser, ci95, gap_captured, pick_majority, pick_reward  # noqa: E402
from training.generation import resolve_reward_model, score_rewards  # noqa: E402
from training.prefs import all_pairs  # noqa: E402
from training.verifier import score_with_verifier  # noqa: E402


def mean(values: list[Any]) -> float:
    return sum(float(v) for v in values) / len(values) if values else float("nan")


def judge(rows: list[dict[str, Any]], rewards: list[list[float]], n: int, parse: Any) -> dict[str, Any]:
    """Every number of one reward model on these rows (rewards[i][j] for row i, reply j)."""
    wins: list[bool] = []
    for row, r in zip(rows, rewards, strict=True):
        texts, gold = row["samples"], row["gold"]
        keep = [j for j, t in enumerate(texts) if t.strip()]
        for a, b in all_pairs([texts[j] for j in keep], [gold[j] for j in keep]):
            wins.append(r[keep[a]] > r[keep[b]])
    per_sample = mean([g == 1.0 for row in rows for g in row["gold"][:n]])
    oracle = mean([max(row["gold"][:n]) == 1.0 for row in rows])
    bon = [row["gold"][pick_reward(r[:n])] == 1.0 for row, r in zip(rows, rewards, strict=True)]
    out: dict[str, Any] = {
        "pairs": len(wins),
        "pairwise_accuracy": mean(wins),
        "pairwise_accuracy_ci95": ci95(wins),
        "bon_accuracy": mean(bon),
        "bon_accuracy_ci95": ci95(bon),
        "gap_captured": gap_captured(mean(bon), per_sample, oracle),
    }
    if all("greedy_gold" in row for row in rows):
        diff = [float(b) - row["greedy_gold"] for b, row in zip(bon, rows, strict=True)]
        out["bon_minus_greedy"] = mean(diff)
        out["bon_minus_greedy_ci95"] = ci95(diff)
    if parse is not None:
        picks = [
            pick_majority([parse(t) for t in row["samples"][:n]], r[:n])
            for row, r in zip(rows, rewards, strict=True)
        ]
        both = [p is not None and row["gold"][p] == 1.0 for row, p in zip(rows, picks, strict=True)]
        out["reward_majority_accuracy"] = mean(both)
        out["reward_majority_gap_captured"] = gap_captured(mean(both), per_sample, oracle)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", required=True, help="OUT.samples.jsonl of `bonserve data prefs` (held-out).")
    ap.add_argument("--reward-models", nargs="*", default=[], help="Reward models (registry) to compare.")
    ap.add_argument("--verifiers", nargs="*", default=[], help="Generative verifiers (registry) to compare.")
    ap.add_argument("--n", type=int, default=8, help="Best-of-n on the first n replies of each prompt.")
    ap.add_argument("--task", default="arithmetic", help="Task whose parser the majority vote uses.")
    ap.add_argument("--registry", default=None)
    ap.add_argument("--out", required=True, help="Output directory.")
    args = ap.parse_args()

    if not args.reward_models and not args.verifiers:
        raise SystemExit("nothing to compare: give --reward-models and/or --verifiers")
    rows = [json.loads(line) for line in Path(args.samples).read_text().splitlines()]
    for row in rows:  # `bonserve eval` writes the user turn as text
        if isinstance(row["prompt"], str):
            row["prompt"] = [{"role": "user", "content": row["prompt"]}]
    if any(row.get("gold") is None for row in rows):
        raise SystemExit(f"{args.samples}: rows without gold scores (sampled with --judge rm?)")
    if min(len(row["samples"]) for row in rows) < args.n:
        raise SystemExit(f"{args.samples}: fewer than n={args.n} replies for some prompt")
    registry = Registry(args.registry) if args.registry else Registry()
    parse = answer_parser(args.task)
    n = args.n
    per_sample = mean([g == 1.0 for row in rows for g in row["gold"][:n]])
    oracle = mean([max(row["gold"][:n]) == 1.0 for row in rows])
    baselines: dict[str, Any] = {"per_sample_accuracy": per_sample, "pass_at_n": oracle, "prompts": len(rows)}
    if all("greedy_gold" in row for row in rows):
        baselines["greedy_accuracy"] = mean([row["greedy_gold"] == 1.0 for row in rows])
    if parse is not None:
        vote = [pick_majority([parse(t) for t in row["samples"][:n]]) for row in rows]
        ok = [p is not None and row["gold"][p] == 1.0 for row, p in zip(rows, vote, strict=True)]
        baselines["majority_accuracy"] = mean(ok)
        baselines["majority_gap_captured"] = gap_captured(mean(ok), per_sample, oracle)

    results: dict[str, Any] = {}
    per_prompt: dict[str, list[list[float]]] = {}
    items = [(row["prompt"], t) for row in rows for t in row["samples"]]
    for name in [*args.reward_models, *args.verifiers]:
        t0 = time.perf_counter()
        if name in args.verifiers:  # also an SFT entry trained on verifier rows
            entry = registry.load(name)
            if entry.manifest.format != "full":
                raise SystemExit(f"{name}: a verifier is scored as full weights; merge the adapter first")
            flat = score_with_verifier(entry.path, items)
        else:  # a reward model, or a verifier entry (kind verifier) scored the same way
            entry = resolve_reward_model(registry, name)
            flat = score_rewards(entry.path, items)
        sizes = [len(row["samples"]) for row in rows]
        rewards, at = [], 0
        for size in sizes:
            rewards.append(flat[at : at + size])
            at += size
        per_prompt[name] = rewards
        results[name] = {
            **judge(rows, rewards, n, parse),
            "score_seconds": time.perf_counter() - t0,
            "manifest": {
                "hyperparameters": entry.manifest.hyperparameters,
                "trained_for": entry.manifest.extra.get("trained_for"),
                "eval_accuracy": entry.manifest.metrics.get("eval_accuracy"),
                "train_runtime": entry.manifest.metrics.get("train_runtime"),
            },
        }

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"samples": args.samples, "n": n, "baselines": baselines, "reward_models": results}
    (out / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    with open(out / "per_prompt.jsonl", "w") as f:
        for i, row in enumerate(rows):
            f.write(
                json.dumps(
                    {
                        "id": row["id"],
                        "gold": row["gold"],
                        "rewards": {k: v[i] for k, v in per_prompt.items()},
                    }
                )
                + "\n"
            )

    def gap(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    greedy = f", greedy {baselines['greedy_accuracy']:.3f}" if "greedy_accuracy" in baselines else ""
    print(
        f"{len(rows)} held-out prompts x {n}{greedy}: per-sample {per_sample:.3f}, pass@{n} {oracle:.3f}",
        end="",
    )
    if "majority_accuracy" in baselines:
        print(
            f", majority {baselines['majority_accuracy']:.3f} (gap {gap(baselines['majority_gap_captured'])})"
        )
    print(
        f"\n| reward model | pairwise acc. | pairs | BoN-{n} acc. | gap captured | RM+majority acc. (gap) "
        "| BoN - greedy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        both = (
            f"{r['reward_majority_accuracy']:.3f} ({gap(r['reward_majority_gap_captured'])})"
            if "reward_majority_accuracy" in r
            else "-"
        )
        print(
            f"| {name} | {r['pairwise_accuracy']:.3f} ± {r['pairwise_accuracy_ci95']:.3f} | {r['pairs']} | "
            f"{r['bon_accuracy']:.3f} ± {r['bon_accuracy_ci95']:.3f} | {gap(r['gap_captured'])} | {both} | "
            + (
                f"{r['bon_minus_greedy']:+.3f} ± {r['bon_minus_greedy_ci95']:.3f} |"
                if "bon_minus_greedy" in r
                else "- |"
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
