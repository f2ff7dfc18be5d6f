"""Preference pairs from a policy's own samples: sample k, judge, keep best vs worst.

This is the "generate several responses, let a judge rank them" step. It works from any
policy in the registry (LoRA entries are applied with vLLM's LoRARequest), so a reward model
can be refreshed on the outputs of the tuned policy it will rerank: one trained on base
samples was measured *below chance* on a DPO model's samples (measured on this project's CPU box).

Pair rules, per prompt (`--pairs`):
- `best-worst`: chosen = the best sample by the judge, rejected = the worst (one pair);
- `all`: every (better, worse) combination of *distinct* replies, e.g. each correct answer
  against each wrong one under the gold verifier. A reward model that reranks Best-of-N
  candidates has to order all of them, not only the extremes, and one prompt gives up to
  (k/2)^2 pairs instead of one. `--max-pairs-per-prompt` caps a prompt's share (seeded).
Prompts whose samples all score the same (ties) give no pair. Empty completions are not
candidates (a pair needs two non-empty replies). Output rows are TRL's conversational format
(`prompt` / `chosen` / `rejected` as messages) plus `id`, `chosen_score`, `rejected_score`,
`policy`, `temperature`, which TRL ignores: the reward trainer reads the last two to record
which policy and sampling temperature the model was trained for. Every sample, with its
judge score, also goes to OUT.samples.jsonl (so other pair rules or SFT data can be made
without sampling again), and statistics to stdout and OUT.stats.json.

Prompts: training/prompts.py; options: training/prefs_config.py; command line:
training/scripts/prefs.py.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.flags import ConfigError
from training.prefs_config import PrefsConfig
from training.prompts import Prompt, load_prompts

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


def all_pairs(texts: Sequence[str], scores: Sequence[float]) -> list[tuple[int, int]]:
    """Every (better, worse) index pair of distinct texts, the first index of each distinct
    text standing for its copies; sorted, so the result is deterministic."""
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        first.setdefault(t, i)
    reps = sorted(first.values())
    return [(i, j) for i in reps for j in reps if scores[i] > scores[j]]


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
    *,
    rule: str = "best-worst",
    max_per_prompt: int | None = None,
    temperature: float | None = None,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows in TRL's conversational preference format, and counts."""
    rows, other_pairs = [], []
    ties = empty = 0
    prompts_with_pairs = 0
    rng = random.Random(seed)
    seconds = other if other is not None else [None] * len(prompts)
    for p, texts, judged, second in zip(prompts, samples, scores, seconds, strict=True):
        keep = [i for i, t in enumerate(texts) if t.strip()]
        empty += len(texts) - len(keep)
        if rule == "all":
            picks = all_pairs([texts[i] for i in keep], [judged[i] for i in keep])
            if max_per_prompt is not None and len(picks) > max_per_prompt:
                picks = sorted(rng.sample(picks, max_per_prompt))
        else:
            one = best_vs_worst([judged[i] for i in keep])
            picks = [] if one is None else [one]
        if not picks:
            ties += 1
            continue
        prompts_with_pairs += 1
        for a, b in picks:
            c, r = keep[a], keep[b]
            rows.append(
                {
                    "prompt": p.messages,
                    "chosen": [{"role": "assistant", "content": texts[c]}],
                    "rejected": [{"role": "assistant", "content": texts[r]}],
                    "id": p.id,
                    "chosen_score": judged[c],
                    "rejected_score": judged[r],
                    "policy": policy,
                    "temperature": temperature,
                }
            )
            if second is not None:
                other_pairs.append((second[c], second[r]))
    stats = {
        "prompts": len(prompts),
        "pairs": len(rows),
        "pair_rule": rule,
        "prompts_with_pairs": prompts_with_pairs,
        "ties_dropped": ties,
        "empty_completions": empty,
    }
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
        top_p=config.top_p,
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
    rows, stats = make_pairs(
        prompts,
        texts,
        judged,
        config.policy,
        other,
        rule=config.pairs,
        max_per_prompt=config.max_pairs_per_prompt,
        temperature=config.temperature,
        seed=config.seed,
    )
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
    write_jsonl(
        out.with_name(out.name + ".samples.jsonl"),
        (
            {
                "id": p.id,
                "prompt": p.messages,
                "samples": per,
                "finish_reasons": [s.finish_reason for s in sp],
                "gold": None if gold is None else gold[i],
                "rm": None if rm_scores is None else rm_scores[i],
            }
            for i, (p, per, sp) in enumerate(zip(prompts, texts, sampled, strict=True))
        ),
    )
    stats["out"] = str(out)
    stats["samples_out"] = str(out.with_name(out.name + ".samples.jsonl"))
    stats["config"] = asdict(config)
    out.with_name(out.name + ".stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    return stats
