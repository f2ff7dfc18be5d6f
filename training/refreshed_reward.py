"""A learned reward that refreshes itself between calls: RLHF's outer loop for trainers that
only call reward functions (TRL's GRPOTrainer and RLOOTrainer, `bonserve train grpo|rloo
--reward rm --rm-refresh-every K`).

TRL calls each reward function once per generation round with that round's prompts and
completions. `RefreshedReward` wraps the learned reward (training/reward_fns.py) and, on each
call:

1. before scoring, every K-th round: refreshes the reward model on what it gathered since the
   last refresh (training/rm_refresh.py for a score model, training/verifier_refresh.py for a
   generative verifier), so this round is scored by the refreshed model, as PPO does;
2. scores the round's completions (its reward to the trainer);
3. judges them with the task's gold labels and keeps what the next refresh learns from: every
   (better, worse) pair among one prompt's completions for a score model (GRPO and RLOO
   compare a prompt's completions with each other, the group baseline), the worked check of
   each distinct completion for a verifier, with the p(right) it gave it.

Each refresh's metrics (`rm_refresh/...`, TRL-style names, with the generation round as
`step`) are printed and appended to RUN_DIR/rm_refresh_log.jsonl; TRL's own log keeps
`rewards/rm/mean` beside `rewards/gold/mean` every step. The refreshed model is written as
entry NAME-rm at the end (`save_refreshed_entry`).

Limits, refused by training/online_rl.py: one process (each would refresh its own copy), and
no --resume (TRL's checkpoints do not hold the refreshed reward model).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.reward_fns import Messages, RewardFunction, RewardModelReward, VerifierReward
from training.rm_refresh import RewardRefresher, comparisons, refresher_for
from training.tasks import Example, Task


class RefreshedReward(RewardFunction):
    """`inner` (the learned reward, logged under its own name) refreshed every `every` calls."""

    def __init__(
        self,
        inner: RewardModelReward,
        task: Task,
        refresher: RewardRefresher,
        every: int,
        log_path: Path | None = None,
    ) -> None:
        super().__init__(inner.weight)
        self.name = inner.name
        self.inner, self.task, self.refresher, self.every = inner, task, refresher, every
        self.log_path = log_path
        self.calls = 0
        self.last: dict[str, float] = {}

    @property
    def verifier(self) -> bool:
        return isinstance(self.inner, VerifierReward)

    def __call__(
        self,
        messages_list: Sequence[Messages],
        completions: Sequence[str],
        examples: Sequence[Example | None],
    ) -> list[float | None]:
        if self.calls and self.calls % self.every == 0:
            self.refresh()
        self.calls += 1
        rewards = self.inner(messages_list, completions, examples)
        self.refresher.pending += self.items(messages_list, completions, examples, rewards)
        return rewards

    def items(
        self,
        messages_list: Sequence[Messages],
        completions: Sequence[str],
        examples: Sequence[Example | None],
        rewards: Sequence[float | None],
    ) -> list[Any]:
        """Step 3 of the module docstring: what the next refresh learns from in this round."""
        judged = [
            (m, c, e, r)
            for m, c, e, r in zip(messages_list, completions, examples, rewards, strict=True)
            if e is not None and r is not None
        ]
        if self.verifier:
            from training.verifier_refresh import rollout_checks

            return rollout_checks(self.task, judged)
        groups: dict[str, tuple[Messages, list[str], list[float]]] = {}
        for m, c, e, _ in judged:
            _, texts, gold = groups.setdefault(json.dumps(m), (m, [], []))
            texts.append(c)
            gold.append(float(self.task.reward(e, c)))
        return [p for m, texts, gold in groups.values() for p in comparisons(m, texts, gold)]

    def refresh(self) -> dict[str, float]:
        """Step 1: fine-tune the reward model on everything gathered since the last refresh."""
        new, self.refresher.pending = self.refresher.pending, []
        t0 = time.perf_counter()
        metrics = self.refresher.refresh(self.inner.loaded(), new)
        metrics.update({"time/rm_refresh_s": time.perf_counter() - t0, "step": float(self.calls)})
        self.last = metrics
        line = json.dumps(metrics, sort_keys=True)
        print(f"[rm_refresh] {line}", flush=True)
        if self.log_path is not None:
            with self.log_path.open("a") as f:
                f.write(line + "\n")
        return metrics


def refreshed(
    fns: Sequence[RewardFunction], config: Any, task: Task, log_path: Path | None
) -> list[RewardFunction]:
    """`fns` with the learned reward ("rm") wrapped in a RefreshedReward built from `config`'s
    --rm-refresh-* options (training/rm_refresh_config.py)."""
    out: list[RewardFunction] = []
    for fn in fns:
        if fn.name != "rm":
            out.append(fn)
            continue
        assert isinstance(fn, RewardModelReward)
        refresher = refresher_for(config, verifier=isinstance(fn, VerifierReward))
        out.append(RefreshedReward(fn, task, refresher, config.rm_refresh_every, log_path))
    return out
