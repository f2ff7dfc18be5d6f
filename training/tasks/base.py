"""The common shape of a verifiable task: prompts with fixed splits and a gold reward.

A task is what lets us *measure* BoN, DPO and PPO against the truth instead of against a
learned reward model: every example carries in `meta` what its programmatic verifier needs,
and `reward` returns 1.0 for a correct completion and 0.0 for a wrong one (fractions where
an example has several independent checks).

Splits are deterministic and disjoint:
- "heldout" is drawn first from its own fixed seed; it never changes when "train" grows, so
  numbers measured on it stay comparable across runs and commits.
- "train" is drawn from another seed and rejects every candidate whose `key` (what makes
  two examples "the same question") is in the held-out split.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Example:
    """One prompt of a task. `prompt` is the user message text; `meta` feeds the verifier."""

    id: str
    prompt: str
    # Not part of the hash (a dict is unhashable); still compared by ==.
    meta: dict[str, Any] = field(default_factory=dict, hash=False)


class Task(ABC):
    """A family of prompts with a gold verifier. Subclasses implement `sample` and `reward`."""

    name: ClassVar[str]
    sizes: ClassVar[dict[str, int]]  # examples per split
    seeds: ClassVar[dict[str, int]]  # one fixed seed per split; changing it changes the split

    # --- what a subclass provides -------------------------------------------------------

    @abstractmethod
    def sample(self, rng: random.Random) -> tuple[Any, str, dict[str, Any]]:
        """Draw one candidate: (key, prompt, meta). Equal keys mean "the same question"."""

    @abstractmethod
    def reward(self, example: Example, completion: str) -> float:
        """Gold reward in [0, 1] of `completion` (the assistant's text) for `example`."""

    def worked_check(self, meta: dict[str, Any], completion: str) -> str | None:
        """The check of `completion` written out step by step, ending with what the reply
        claims, for training a generative verifier (training/verifier.py); None when the
        task has no such check. It never states the verdict: the verifier must reach it."""
        return None

    # --- shared machinery ---------------------------------------------------------------

    def messages(self, example: Example) -> list[dict[str, str]]:
        """OpenAI-style chat messages for the example (user turn only, no system prompt:
        the reference baselines were measured that way)."""
        return [{"role": "user", "content": example.prompt}]

    def examples(self, split: str, n: int | None = None) -> list[Example]:
        """The first `n` examples of `split` (all of them when `n` is None), always the same.

        Generated afresh on each call (milliseconds), so callers may mutate what they get.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} for task {self.name!r}: use one of {SPLITS}")
        size = self.sizes[split]
        if n is not None and not 0 <= n <= size:
            raise ValueError(f"task {self.name!r} split {split!r} has {size} examples; asked for {n}")
        heldout = self._draw("heldout", self.sizes["heldout"], exclude=set())
        if split == "heldout":
            drawn = heldout
        else:
            drawn = self._draw("train", size, exclude={key for key, _, _ in heldout})
        return [
            Example(id=f"{self.name}-{split}-{i:05d}", prompt=prompt, meta=meta)
            for i, (_, prompt, meta) in enumerate(drawn[:n] if n is not None else drawn)
        ]

    def _draw(self, split: str, size: int, exclude: set[Any]) -> list[tuple[Any, str, dict[str, Any]]]:
        rng = random.Random(self.seeds[split])
        seen = set(exclude)
        out = []
        attempts = 0
        while len(out) < size:
            attempts += 1
            if attempts > 50 * size + 1000:  # the prompt space is too small for the split sizes
                raise RuntimeError(f"task {self.name!r}: cannot draw {size} distinct {split} examples")
            key, prompt, meta = self.sample(rng)
            if key in seen:
                continue
            seen.add(key)
            out.append((key, prompt, meta))
        return out
