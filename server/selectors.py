"""Best-of-N selectors: which of a request's candidates come back, as pure functions.

A request picks one with `bon_selector` (server/protocol.py); `BestOfN.rank` (server/bon.py)
calls these. Each returns a full order, best first, so `n > 1` returns the next best.

- `reward` (default): the highest reward of the policy's reward model (`bon.rank_candidates`).
- `majority`: self-consistency. Candidates vote with their normalised final answer
  (`normalise_answer`: the last number in the text, else the lower-cased,
  whitespace-collapsed text); the most frequent answer wins. Ties between answers go to the
  one holding the highest reward when the candidates were scored, else to the answer seen
  first. Within an answer the earliest sample represents it. Needs no reward model.
- `logprob`: the highest mean log-probability of the sampled tokens (the policy's own
  confidence; the engine returns the sampled tokens' logprobs, which reach the client only
  if it asked). Ties go to the lower index; a candidate with no tokens ranks last. Needs no
  reward model.
- `reward+majority`: majority, with the reward breaking ties between answers and choosing
  each answer's representative (its best-rewarded sample).

The order of the majority selectors: the winning answer's candidates (representative
first), then the next answer's, and so on. The value each candidate reports as its `score`
is its answer's share of the votes (majority selectors) or its mean token logprob.

These mirror the selectors `bonserve eval` measures (training/eval.py), so what the
evaluation says about a selector is what serving does; the server's answer normaliser is
task-agnostic where the evaluation parses each task's answers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

SELECTORS = ("reward", "majority", "logprob", "reward+majority")
NEEDS_REWARD = frozenset({"reward", "reward+majority"})

# An optionally signed number, digits grouped by thousands or not, with an optional decimal
# part; a sentence's final period is not a decimal point (a digit must follow it).
_NUMBER = re.compile(r"[-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def needs_reward(selector: str) -> bool:
    """Whether `selector` ranks with a reward model (and so needs the policy to have one)."""
    return selector in NEEDS_REWARD


def normalise_answer(text: str) -> str:
    """What a candidate votes for: its last number ("47.0" and "47" agree, "1,234" is
    1234), else its text lower-cased with whitespace collapsed."""
    numbers = _NUMBER.findall(text)
    if numbers:
        value = float(numbers[-1].replace(",", "").replace("\u2212", "-"))
        if value.is_integer():
            return str(int(value))
        return repr(value)
    return " ".join(text.lower().split())


def majority_order(
    answers: Sequence[str], rewards: Sequence[float] | None = None, *, by_reward: bool = False
) -> list[int]:
    """Candidate indices best first by vote. `rewards` (when scored) break ties between
    answers by each answer's best reward; `by_reward` also orders each answer's candidates
    by reward (reward+majority), else they keep sample order."""
    groups: dict[str, list[int]] = {}
    for i, answer in enumerate(answers):
        groups.setdefault(answer, []).append(i)
    if by_reward and rewards is None:
        raise ValueError("reward+majority needs the candidates' rewards")

    def members(group: list[int]) -> list[int]:
        if by_reward and rewards is not None:
            return sorted(group, key=lambda i: (-rewards[i], i))
        return group

    def strength(group: list[int]) -> tuple[int, float, int]:
        best = max(rewards[i] for i in group) if rewards is not None else 0.0
        return -len(group), -best, group[0]

    return [i for group in sorted(groups.values(), key=strength) for i in members(group)]


def vote_shares(answers: Sequence[str]) -> list[float]:
    """Per candidate: the share of all candidates that gave its answer."""
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return [counts[a] / len(answers) for a in answers]


def mean_logprob(token_ids: Sequence[int], logprobs: Sequence[Any] | None) -> float:
    """Mean log-probability of the sampled tokens, from vLLM's per-position logprobs (a
    mapping token id -> Logprob per position); -inf for an empty candidate."""
    if not token_ids:
        return -math.inf
    if logprobs is None or len(logprobs) < len(token_ids):
        raise ValueError("the logprob selector needs the sampled tokens' logprobs (SamplingParams.logprobs)")
    total = sum(float(position[token].logprob) for token, position in zip(token_ids, logprobs, strict=False))
    return total / len(token_ids)


def logprob_order(means: Sequence[float]) -> list[int]:
    """Indices best first by mean token logprob; ties go to the lower index."""
    return sorted(range(len(means)), key=lambda i: (-means[i], i))
