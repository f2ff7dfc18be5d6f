"""Preference pairs from a policy's own samples: sample k, judge, keep best vs worst.

    bonserve data prefs --policy smollm2-135m-instruct --task arithmetic --n-prompts 600 -k 8 \\
        --temperature 0.8 --out prefs.jsonl                                   # gold verifier
    bonserve data prefs --policy arith-dpo --task arithmetic --judge rm --reward-model arith-rm \\
        --out dpo-prefs.jsonl          # reward-model judge; gold agreement is reported too

This is the "generate several responses, let a judge rank them" step. It works from any
policy in the registry (LoRA entries are applied with vLLM's LoRARequest), so a reward model
can be refreshed on the outputs of the tuned policy it will rerank: one trained on base
samples was measured *below chance* on a DPO model's samples (DESIGN.md section 5).

Pair rule, per prompt: chosen = the best sample by the judge, rejected = the worst; prompts
whose samples all score the same (ties) give no pair. Empty completions are not candidates
(a pair needs two non-empty replies). Output rows are TRL's conversational format
(`prompt` / `chosen` / `rejected` as messages) plus `id`, `chosen_score`, `rejected_score`,
`policy`, which TRL ignores. Statistics go to stdout and OUT.stats.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.flags import add_flags
from training.common import ConfigError, config_from_args
from training.prompts import Prompt, load_prompts

JUDGES = ("gold", "rm")
RM_BACKENDS = ("vllm", "transformers")


@dataclass
class PrefsConfig:
    """`bonserve data prefs` options."""

    policy: str = field(metadata={"help": "Registry entry to sample from (full or LoRA)."})
    out: str = field(metadata={"help": "JSONL file to write the pairs to."})
    task: str | None = field(
        default=None,
        metadata={
            "help": "Built-in task giving the prompts and the gold verifier (arithmetic unless --prompts)."
        },
    )
    prompts: str | None = field(
        default=None,
        metadata={
            "help": "JSONL of prompts instead of a task: rows with `prompt` (string or messages); "
            "needs --judge rm."
        },
    )
    split: str = field(default="train", metadata={"help": "Task split: train or heldout."})
    n_prompts: int | None = field(default=None, metadata={"help": "Use the first N prompts (default: all)."})
    k: int = field(default=8, metadata={"help": "Samples per prompt."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    max_tokens: int = field(default=64, metadata={"help": "Longest completion."})
    judge: str = field(
        default="gold",
        metadata={"help": "Rank with the task's gold verifier ('gold') or a reward model ('rm')."},
    )
    reward_model: str | None = field(
        default=None,
        metadata={"help": "Reward model entry: the judge with --judge rm; otherwise scored for agreement."},
    )
    rm_backend: str = field(
        default="vllm", metadata={"help": "Score with vLLM's pooling runner or with transformers."}
    )
    registry: str | None = field(default=None, metadata={"help": "Registry directory."})
    seed: int = field(default=0, metadata={"help": "Engine seed."})
    enforce_eager: bool = field(
        default=False, metadata={"help": "Skip torch.compile in the engine (starts faster, decodes slower)."}
    )
    kv_cache_gib: float = field(default=1.0, metadata={"help": "KV cache per engine."})

    def __post_init__(self) -> None:
        if self.judge not in JUDGES:
            raise ConfigError(f"judge={self.judge!r}: use one of {JUDGES}")
        if self.rm_backend not in RM_BACKENDS:
            raise ConfigError(f"rm_backend={self.rm_backend!r}: use one of {RM_BACKENDS}")
        if self.judge == "rm" and not self.reward_model:
            raise ConfigError("judge='rm' needs --reward-model")
        if self.prompts:
            if self.task:
                raise ConfigError(f"prompts={self.prompts!r} and task={self.task!r}: give one prompt source")
            if self.judge == "gold":
                raise ConfigError(f"prompts={self.prompts!r} has no gold verifier: use --judge rm")
        elif not self.task:
            self.task = "arithmetic"
        if self.task:
            from training.tasks import get_task

            try:
                get_task(self.task)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.split not in ("train", "heldout"):
            raise ConfigError(f"split={self.split!r}: use 'train' or 'heldout'")
        if self.k < 2:
            raise ConfigError(f"k={self.k!r}: a pair needs at least 2 samples per prompt")
        if self.n_prompts is not None and self.n_prompts < 1:
            raise ConfigError(f"n_prompts={self.n_prompts!r}: must be >= 1")
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature!r}: sampling k distinct completions needs > 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p!r}: must lie in (0, 1]")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens={self.max_tokens!r}: must be >= 1")
        if self.kv_cache_gib <= 0:
            raise ConfigError(f"kv_cache_gib={self.kv_cache_gib!r}: must be > 0")


# --------------------------------------------------------------------------- pairs


def best_vs_worst(scores: Sequence[float]) -> tuple[int, int] | None:
    """(chosen, rejected) indices by the pair rule, or None on a tie. The first of equal
    best (worst) samples is taken, so the choice is deterministic."""
    if not scores:
        return None
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    if scores[best] == scores[worst]:
        return None
    return best, worst


def agreement(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """How often a second judge orders kept pairs like the first: (its chosen, its rejected)."""
    decided = [(c, r) for c, r in pairs if c != r]
    agree = sum(c > r for c, r in decided)
    return {
        "pairs": len(pairs),
        "ties": len(pairs) - len(decided),
        "agreement": agree / len(decided) if decided else None,
    }


def make_pairs(
    prompts: Sequence[Prompt],
    samples: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    policy: str,
    other: Sequence[Sequence[float]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows in TRL's conversational preference format, and counts."""
    rows, other_pairs = [], []
    ties = empty = 0
    seconds = other if other is not None else [None] * len(prompts)
    for p, texts, judged, second in zip(prompts, samples, scores, seconds, strict=True):
        keep = [i for i, t in enumerate(texts) if t.strip()]
        empty += len(texts) - len(keep)
        pick = best_vs_worst([judged[i] for i in keep])
        if pick is None:
            ties += 1
            continue
        c, r = keep[pick[0]], keep[pick[1]]
        rows.append(
            {
                "prompt": p.messages,
                "chosen": [{"role": "assistant", "content": texts[c]}],
                "rejected": [{"role": "assistant", "content": texts[r]}],
                "id": p.id,
                "chosen_score": judged[c],
                "rejected_score": judged[r],
                "policy": policy,
            }
        )
        if second is not None:
            other_pairs.append((second[c], second[r]))
    stats = {"prompts": len(prompts), "pairs": len(rows), "ties_dropped": ties, "empty_completions": empty}
    if other is not None:
        stats["judge_agreement"] = agreement(other_pairs)
    return rows, stats


# --------------------------------------------------------------------------- run


def run(config: PrefsConfig) -> dict[str, Any]:
    """Sample, judge, write OUT and OUT.stats.json; returns the stats."""
    from core.registry import Registry
    from training.data import write_jsonl
    from training.generation import resolve_policy, resolve_reward_model, sample_policy, score_rewards

    registry = Registry(config.registry) if config.registry else Registry()
    policy = resolve_policy(registry, config.policy)
    rm = resolve_reward_model(registry, config.reward_model) if config.reward_model else None
    prompts = load_prompts(task=config.task, split=config.split, n=config.n_prompts, path=config.prompts)

    _, sampled = sample_policy(
        policy,
        [p.messages for p in prompts],
        n=config.k,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        enforce_eager=config.enforce_eager,
        kv_cache_gib=config.kv_cache_gib,
        seed=config.seed,
    )
    assert sampled is not None
    texts = [[s.text for s in per] for per in sampled]

    gold = None
    if config.task:
        from training.tasks import get_task

        task = get_task(config.task)
        gold = [[task.reward(p.example, t) for t in per] for p, per in zip(prompts, texts, strict=True)]
    rm_scores = None
    if rm is not None:
        flat = score_rewards(
            rm.path,
            [(p.messages, t) for p, per in zip(prompts, texts, strict=True) for t in per],
            backend=config.rm_backend,
            kv_cache_gib=config.kv_cache_gib,
        )
        rm_scores = [flat[i * config.k : (i + 1) * config.k] for i in range(len(prompts))]

    judged, other = (gold, rm_scores) if config.judge == "gold" else (rm_scores, gold)
    assert judged is not None
    rows, stats = make_pairs(prompts, texts, judged, config.policy, other)
    n_samples = sum(len(t) for t in texts)
    stats.update(
        {
            "policy": config.policy,
            "task": config.task,
            "split": config.split,
            "k": config.k,
            "temperature": config.temperature,
            "judge": config.judge,
            "reward_model": config.reward_model,
            "samples": n_samples,
        }
    )
    if gold is not None:
        stats["gold_mean_reward"] = sum(map(sum, gold)) / n_samples
        stats["gold_pass_at_k"] = sum(max(g) == 1.0 for g in gold) / len(gold)
    if not rows:
        raise ConfigError(
            f"no pairs: all {len(prompts)} prompts tied under the {config.judge} judge "
            "(raise --k or --temperature)"
        )
    out = Path(config.out)
    write_jsonl(out, rows)
    stats["out"] = str(out)
    stats["config"] = asdict(config)
    out.with_name(out.name + ".stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    return stats


def print_stats(stats: dict[str, Any]) -> None:
    print(
        f"[data prefs] {stats['policy']} on {stats['task'] or 'prompts file'} "
        f"({stats['prompts']} prompts x k={stats['k']}, T={stats['temperature']}, judge {stats['judge']})"
    )
    print(f"  pairs kept        {stats['pairs']}")
    print(f"  ties dropped      {stats['ties_dropped']}")
    print(f"  empty completions {stats['empty_completions']}")
    if "gold_mean_reward" in stats:
        print(f"  gold per-sample   {stats['gold_mean_reward']:.3f}   pass@k {stats['gold_pass_at_k']:.3f}")
    if "judge_agreement" in stats:
        a = stats["judge_agreement"]
        other = "reward model" if stats["judge"] == "gold" else "gold verifier"
        value = "n/a" if a["agreement"] is None else f"{a['agreement']:.3f}"
        print(f"  {other} agrees on {value} of {a['pairs'] - a['ties']} decided pairs ({a['ties']} ties)")
    print(f"  wrote {stats['out']}")


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="bonserve data prefs", description=__doc__.splitlines()[0]
    )
    add_flags(parser, PrefsConfig)
    parser.add_argument("-k", dest="k", type=int, default=argparse.SUPPRESS, help="Same as --k.")
    return parser


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    from core.registry import RegistryError
    from training.data import DataError

    args = args if args is not None else make_parser().parse_args(argv)
    try:
        stats = run(config_from_args(PrefsConfig, args))
    except (ConfigError, DataError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_stats(stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
