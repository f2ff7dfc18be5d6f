"""Reward functions for online RL (GRPO, RLOO, the in-house PPO), independent of any trainer.

    from training.reward_fns import build_reward_functions, weighted_rewards
    fns = build_reward_functions(task=get_task("arithmetic"), reward_model="arith-rm",
                                 registry=Registry(), gold_weight=0.0, rm_weight=1.0)
    totals, per_function = weighted_rewards(fns, messages_list, completions, examples)

The interface (`RewardFunction`):
- `name`: what the reward is logged as ("gold", "rm"); trainers log `rewards/<name>/...`.
- `weight`: its weight in the training reward; weight 0 means *logged, not optimised*.
- `__call__(messages_list, completions, examples) -> list[float | None]`: one reward per
  completion. `messages_list[i]` is the prompt conversation (OpenAI-style messages),
  `completions[i]` the assistant's text, `examples[i]` the task `Example` the prompt came from
  (None when it has none); None means "cannot score this one".

Where the rewards come from:
- the gold verifier of a built-in task (`GoldReward`, `task.reward(example, completion)`);
- a registry reward model (`RewardModelReward`, kind rm, full checkpoint): the score logit of
  `AutoModelForSequenceClassification` on `core.chat.reward_ids`, the same text the
  RewardTrainer trained on and the server's pooling engine scores;
- a generative verifier (`VerifierReward`, kind verifier): p(right) of its written-out check.

Reward hacking shows when a learned reward rises and the gold one does not, so whenever a
task has a verifier it is built too: with weight 0 when only the reward model trains.

TRL's GRPOTrainer / RLOOTrainer call reward functions as `f(prompts=, completions=, **columns)`
and log each under its `__name__`; `to_trl` adapts a RewardFunction to that, reading the
task example back from the dataset column `example` (`encode_example` writes it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.tasks import Example, Task

Messages = list[dict[str, str]]
EXAMPLE_COLUMN = "example"


class RewardFunction:
    """One named, weighted reward (see the module docstring for the call contract)."""

    name: str = "reward"

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = float(weight)

    def __call__(
        self,
        messages_list: Sequence[Messages],
        completions: Sequence[str],
        examples: Sequence[Example | None],
    ) -> list[float | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weight={self.weight})"


class GoldReward(RewardFunction):
    """The task's programmatic verifier; prompts without a task example get None."""

    name = "gold"

    def __init__(self, task: Task, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.task = task

    def __call__(
        self,
        messages_list: Sequence[Messages],
        completions: Sequence[str],
        examples: Sequence[Example | None],
    ) -> list[float | None]:
        return [
            None if ex is None else float(self.task.reward(ex, text))
            for ex, text in zip(examples, completions, strict=True)
        ]


class RewardModelReward(RewardFunction):
    """A registry reward model scored with transformers (loaded on first use, kept after)."""

    name = "rm"
    default_batch_size = 16

    def __init__(
        self, path: Path | str, weight: float = 1.0, *, batch_size: int | None = None, device: Any = "cpu"
    ) -> None:
        super().__init__(weight)
        self.path = Path(path)
        self.batch_size, self.device = batch_size or self.default_batch_size, device
        self._scorer: Any = None

    def __call__(
        self,
        messages_list: Sequence[Messages],
        completions: Sequence[str],
        examples: Sequence[Example | None],
    ) -> list[float | None]:
        return [self.reward(s) for s in self.loaded()(list(zip(messages_list, completions, strict=True)))]

    def reward(self, score: float) -> float:
        """The training reward of one raw score (the score logit itself)."""
        return float(score)

    def loaded(self) -> Any:
        """The in-memory scorer, loaded on first use."""
        if self._scorer is None:
            self._scorer = self.load()
        return self._scorer

    def load(self) -> Any:
        from training.reward import RewardModelScorer

        return RewardModelScorer(self.path, self.batch_size, self.device)


class VerifierReward(RewardModelReward):
    """A generative verifier (kind verifier) as the learned reward: the probability it gives
    " right" over " wrong" at the verdict of its greedy check, in [0, 1] like the gold reward
    (its raw log-odds reach +-30, a scale PPO's advantages would have to unlearn). Logged as
    "rm", the learned reward beside the gold one."""

    default_batch_size = 32

    def reward(self, score: float) -> float:
        return 1.0 / (1.0 + math.exp(-score))

    def load(self) -> Any:
        from training.verifier import TransformersVerifier

        return TransformersVerifier(self.path, self.batch_size, self.device)


def build_reward_functions(
    task: Task | None,
    reward_model: str | None,
    registry: Any,
    gold_weight: float,
    rm_weight: float,
    *,
    device: Any = "cpu",
) -> list[RewardFunction]:
    """The gold verifier (if `task`) and the reward model (if `reward_model`, an entry of
    `registry`), with their weights; a weight of 0 keeps a reward for logging only.

    Raises ValueError when nothing would be optimised (no function, or all weights 0).
    """
    from training.generation import resolve_reward_model

    fns: list[RewardFunction] = []
    if task is not None:
        fns.append(GoldReward(task, gold_weight))
    if reward_model is not None:
        entry = resolve_reward_model(registry, reward_model)
        if entry.manifest.kind == "verifier":
            fns.append(VerifierReward(entry.path, rm_weight, device=device))
        else:
            fns.append(RewardModelReward(entry.path, rm_weight, device=device))
    if any(f.weight < 0 for f in fns):
        raise ValueError(f"negative reward weights {fns}: a weight is >= 0 (0 = log only)")
    if not any(f.weight > 0 for f in fns):
        raise ValueError(f"no reward to optimise: {fns or 'no task and no reward model'}")
    return fns


def weighted_rewards(
    fns: Sequence[RewardFunction],
    messages_list: Sequence[Messages],
    completions: Sequence[str],
    examples: Sequence[Example | None],
) -> tuple[list[float], dict[str, list[float | None]]]:
    """(training reward per completion, every function's raw rewards by name).

    The total skips functions that returned None for a completion (as TRL's nansum does).
    """
    per_function = {f.name: f(messages_list, completions, examples) for f in fns}
    totals = []
    for i in range(len(completions)):
        totals.append(sum(f.weight * r for f in fns if (r := per_function[f.name][i]) is not None))
    return totals, per_function


# --------------------------------------------------------------------------- dataset columns and TRL


def encode_example(example: Example | None) -> str:
    """The `example` column of a prompt row: JSON (task metas differ in shape, so one string
    column keeps Arrow from guessing a schema), "" for prompts with no task example."""
    if example is None:
        return ""
    return json.dumps({"id": example.id, "prompt": example.prompt, "meta": example.meta}, sort_keys=True)


def decode_example(value: str | None) -> Example | None:
    if not value:
        return None
    data = json.loads(value)
    return Example(id=data["id"], prompt=data["prompt"], meta=data["meta"])


def _as_messages(prompt: Any) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _as_text(completion: Any) -> str:
    """TRL passes conversational completions as [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion)


class TRLRewardFunction:
    """A RewardFunction with TRL's signature; `__name__` is what TRL logs it as."""

    def __init__(self, fn: RewardFunction) -> None:
        self.fn = fn
        self.__name__ = fn.name

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
    ) -> list[float | None]:
        encoded = columns.get(EXAMPLE_COLUMN) or [""] * len(prompts)
        return self.fn(
            [_as_messages(p) for p in prompts],
            [_as_text(c) for c in completions],
            [decode_example(e) for e in encoded],
        )


def to_trl(fns: Sequence[RewardFunction]) -> tuple[list[TRLRewardFunction], list[float]]:
    """(TRL reward_funcs, reward_weights) for GRPOConfig / RLOOConfig."""
    return [TRLRewardFunction(f) for f in fns], [f.weight for f in fns]
