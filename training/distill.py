"""Best-of-N distillation: fine-tune a policy toward its own Best-of-N choices.

Best-of-N pays N decodes per request for the reward model's pick of N samples. Distillation
moves that choice into the weights, so one sample (greedy, n=1) does what Best-of-N did (BOND,
Sessa et al. 2024; BoNBoN, Gui et al. 2024). The recipe here is the SFT term of BoNBoN:

1. the policy's own replies at the temperature Best-of-N serves with, N per prompt: the
   samples file `bonserve data prefs` writes (OUT.samples.jsonl), drawn by the policy that
   is trained (`--base`; checked against OUT.stats.json);
2. the served reward model scores the first N replies of each prompt;
3. each prompt's winner, the highest-reward non-empty reply (the first of equals), is what
   Best-of-N would have returned; the policy is fine-tuned on (prompt, winner) with TRL's
   SFTTrainer, loss on the completion only.
BoNBoN's other term (winner preferred over the worst reply) is `data prefs --judge rm` then
`train dpo`. The entry is an SFT entry whose manifest says what it was distilled from:
`extra.distilled` = reward model, n, the samples' policy and temperature, prompts, and, when
the samples carry gold scores, the winners' mean gold reward beside the per-sample mean (what
Best-of-N under this reward model bought on the training prompts).

Options: training/distill_config.py; command line: training/scripts/distill.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.flags import ConfigError
from core.registry import Entry
from training.data import DataError
from training.distill_config import BoNDistillConfig

SAMPLES_SUFFIX = ".samples.jsonl"


def winner(texts: Sequence[str], rewards: Sequence[float]) -> int | None:
    """Index of the highest-reward non-empty reply (the first of equals), None if all empty."""
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if not keep:
        return None
    return max(keep, key=lambda i: (rewards[i], -i))


def bon_winners(
    rows: Sequence[dict[str, Any]], rewards: Sequence[Sequence[float]], n: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """SFT rows (prompt / completion as messages) of each prompt's winner among its first `n`
    samples, and counts. `rewards[i]` scores `rows[i]["samples"][:n]`."""
    out: list[dict[str, Any]] = []
    all_empty = 0
    gold_winners: list[float] = []
    gold_samples: list[float] = []
    for row, scores in zip(rows, rewards, strict=True):
        texts = row["samples"][:n]
        best = winner(texts, scores)
        gold = row.get("gold")
        if gold is not None:
            gold_samples.extend(gold[:n])
        if best is None:
            all_empty += 1
            continue
        out.append(
            {
                "prompt": row["prompt"],
                "completion": [{"role": "assistant", "content": texts[best]}],
                "id": row.get("id"),
                "reward": scores[best],
                "gold": None if gold is None else gold[best],
            }
        )
        if gold is not None:
            gold_winners.append(gold[best])
    stats: dict[str, Any] = {"prompts": len(rows), "winners": len(out), "all_empty_dropped": all_empty}
    if gold_winners:
        stats["winner_gold_mean"] = sum(gold_winners) / len(gold_winners)
        stats["sample_gold_mean"] = sum(gold_samples) / len(gold_samples)
    return out, stats


def load_samples(path: str | Path, n: int) -> list[dict[str, Any]]:
    """Rows of a samples file, each with a message `prompt` and at least `n` string samples."""
    from training.data import load_rows, messages_of, row_location

    rows = load_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    for i, row in enumerate(rows):
        where = row_location(rows, i, str(path))
        row["prompt"] = messages_of(row, where)
        samples = row.get("samples")
        if not isinstance(samples, list) or not all(isinstance(s, str) for s in samples):
            raise DataError(
                f"{where}: field 'samples': expected a list of strings (a `data prefs` samples file)"
            )
        if len(samples) < n:
            raise DataError(f"{where}: {len(samples)} samples, fewer than n={n}")
    return list(rows)


def samples_source(path: str | Path) -> dict[str, Any] | None:
    """The stats `data prefs` wrote beside a samples file (policy, temperature), if there."""
    name = Path(path).name
    if not name.endswith(SAMPLES_SUFFIX):
        return None
    stats = Path(path).with_name(name[: -len(SAMPLES_SUFFIX)] + ".stats.json")
    return json.loads(stats.read_text()) if stats.is_file() else None


def run(config: BoNDistillConfig) -> Entry | None:
    """Score, pick the winners, fine-tune, write the entry; returns it (None on non-main
    processes)."""
    from training.common import process_state
    from training.data import validate_sft_rows, write_jsonl
    from training.generation import resolve_reward_model, score_rewards
    from training.sft import fine_tune

    rows = load_samples(config.data, config.n)
    source = samples_source(config.data)
    policy = source.get("policy") if source else None
    if policy != config.base and not config.allow_off_policy:
        drawn = (
            f"were drawn by {policy!r}" if policy else "have no OUT.stats.json saying which policy drew them"
        )
        raise ConfigError(
            f"data={config.data!r}: the samples {drawn}, not --base {config.base!r}; distillation "
            "teaches a policy its own Best-of-N choices (--allow-off-policy to train anyway)"
        )
    rm = resolve_reward_model(config.open_registry(), config.reward_model or "")
    items = [(row["prompt"], text) for row in rows for text in row["samples"][: config.n]]
    flat = score_rewards(rm.path, items, backend=config.rm_backend, kv_cache_gib=config.kv_cache_gib)
    rewards = [flat[i * config.n : (i + 1) * config.n] for i in range(len(rows))]
    winners, stats = bon_winners(rows, rewards, config.n)
    if not winners:
        raise DataError(f"{config.data}: every prompt's first {config.n} samples are empty")
    validate_sft_rows(winners, config.data)
    stats |= {
        "method": "bon-distill (SFT on Best-of-N winners)",
        "reward_model": config.reward_model,
        "n": config.n,
        "samples": str(config.data),
        "samples_policy": policy,
        "samples_temperature": source.get("temperature") if source else None,
    }
    entry = fine_tune(config, winners, extra={"distilled": stats})
    if process_state().is_main_process:  # the picks, for inspection (the run dir exists now)
        write_jsonl(config.run_dir() / "bon-winners.jsonl", winners)
    return entry
