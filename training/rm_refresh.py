"""RLHF's outer loop: the learned reward model refreshed on the policy's own samples while PPO
trains (training/ppo.py calls `RewardRefresher.refresh` every --rm-refresh-every iterations).

A reward model trained on one policy's samples loses its judgement on the samples of the policy
PPO makes from it: the policy moves to where the reward model was never taught, and the proxy
rises while the truth does not (measured with a frozen reward model: proxy 1.6 -> 3.6, gold
0.2-0.5, docs/benchmarks/training.md). The remedy of the InstructGPT line of work is to keep
collecting comparisons on the current policy and retrain. Here the task's gold labels stand in
for the human labellers:

1. the trainer samples --rm-refresh-k replies for --rm-refresh-prompts training prompts from the
   current policy and judges each with the gold verifier;
2. every pair of distinct replies of a prompt that the gold reward ranks is a comparison
   (`comparisons`: on a right/wrong task, every (correct, wrong) pair); they join the buffer of
   every comparison gathered so far;
3. the reward model's pairwise accuracy on the new comparisons is measured *before* it trains
   on them: on-policy and unseen, the honest number for how well it still judges this policy;
4. it is fine-tuned in place (full weights, the Bradley-Terry loss
   -log sigmoid(r_chosen - r_rejected), as TRL's RewardTrainer) for --rm-refresh-steps
   mini-batches drawn from the whole buffer, and its accuracy on the new comparisons measured
   again.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Comparison:
    messages: Messages
    chosen: str
    rejected: str


def comparisons(messages: Messages, replies: Sequence[str], gold: Sequence[float]) -> list[Comparison]:
    """Every pair of distinct replies to one prompt whose gold rewards differ, the higher one
    chosen (a reply sampled twice counts once)."""
    best: dict[str, float] = {}
    for reply, g in zip(replies, gold, strict=True):
        best[reply] = max(g, best.get(reply, g))
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))
    return [
        Comparison(messages, hi, lo)
        for i, (hi, g_hi) in enumerate(ranked)
        for lo, g_lo in ranked[i + 1 :]
        if g_hi > g_lo
    ]


def pairwise_accuracy(scorer: Any, pairs: Sequence[Comparison]) -> float:
    """Share of pairs whose chosen reply the reward model scores higher (NaN with none)."""
    if not pairs:
        return float("nan")
    chosen = scorer([(p.messages, p.chosen) for p in pairs])
    rejected = scorer([(p.messages, p.rejected) for p in pairs])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)


def bradley_terry_loss(chosen: Any, rejected: Any) -> Any:
    """-log sigmoid(r_chosen - r_rejected), averaged over the pairs."""
    import torch

    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


class RewardRefresher:
    """The comparison buffer and the fine-tuning of one in-memory reward model
    (training.reward.RewardModelScorer)."""

    def __init__(self, steps: int, batch_size: int, learning_rate: float, seed: int) -> None:
        self.steps, self.batch_size, self.learning_rate = steps, batch_size, learning_rate
        self.seed = seed
        self.buffer: list[Comparison] = []
        self.refreshes = 0

    def refresh(self, scorer: Any, new: list[Comparison]) -> dict[str, float]:
        """Steps 3-4 of the module docstring; the metrics, under `rm_refresh/`."""
        import torch

        before = pairwise_accuracy(scorer, new)
        self.buffer.extend(new)
        self.refreshes += 1
        losses: list[float] = []
        if self.buffer:
            rng = random.Random(self.seed * 7_919 + self.refreshes)
            model = scorer.model
            optimizer = torch.optim.AdamW(model.parameters(), lr=self.learning_rate, weight_decay=0.0)
            model.train()
            for _ in range(self.steps):
                batch = rng.sample(self.buffer, min(self.batch_size, len(self.buffer)))
                chosen = scorer.scores([(p.messages, p.chosen) for p in batch])
                rejected = scorer.scores([(p.messages, p.rejected) for p in batch])
                loss = bradley_terry_loss(chosen, rejected)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
            model.eval()
        return {
            "rm_refresh/pairs": float(len(new)),
            "rm_refresh/pairs_total": float(len(self.buffer)),
            "rm_refresh/accuracy_before": before,
            "rm_refresh/accuracy_after": pairwise_accuracy(scorer, new),
            "rm_refresh/loss": sum(losses) / len(losses) if losses else float("nan"),
        }

    # --- checkpoints: the buffer beside the reward model's weights --------------------------

    def save(self, directory: Path, scorer: Any) -> None:
        scorer.model.save_pretrained(directory, safe_serialization=True)
        scorer.tokenizer.save_pretrained(directory)
        with (directory / "comparisons.jsonl").open("w") as f:
            for p in self.buffer:
                row = {"messages": p.messages, "chosen": p.chosen, "rejected": p.rejected}
                f.write(json.dumps(row) + "\n")
        (directory / "refresh_state.json").write_text(json.dumps({"refreshes": self.refreshes}))

    def load(self, directory: Path) -> None:
        rows = [json.loads(line) for line in (directory / "comparisons.jsonl").read_text().splitlines()]
        self.buffer = [Comparison(r["messages"], r["chosen"], r["rejected"]) for r in rows]
        self.refreshes = int(json.loads((directory / "refresh_state.json").read_text())["refreshes"])
