"""Sorting short lists: "Sort these numbers in ascending order: 42, 7, 19. Reply with ..."

Three to six distinct integers in 1..99. The reward is 1.0 only for exactly the sorted
list (same numbers, same count, ascending), else 0.0.

Parsing, for the same reason as arithmetic (small models echo the question): the answer
is the *last run* of two or more numbers separated by commas, semicolons, whitespace or
"and" ("42, 7, 19 sorted is 7, 19, 42" -> 7, 19, 42; "7, 19 and 42." -> 7, 19, 42).
Anything else breaks a run, so a trailing remark such as "(3 numbers)" does not spoil it.
If no run has two numbers, the last single number stands (a one-number answer is wrong
anyway, but it is what the model said).
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar

from training.tasks.base import Example, Task

PROMPT = "Sort these numbers in ascending order: {numbers}. Reply with just the numbers, separated by commas."

_NUM = r"\d+"  # the task has no negatives; a "-" is a hyphen or a dash
_SEP = r"(?:\s*[,;]\s*|\s+)(?:and\s+)?"
_RUN = re.compile(rf"{_NUM}(?:{_SEP}{_NUM})*")


def parse_list(text: str) -> list[int] | None:
    """The list of integers the completion answers with, or None if it has no number."""
    runs = [[int(x) for x in re.findall(_NUM, m.group())] for m in _RUN.finditer(text)]
    if not runs:
        return None
    long_runs = [r for r in runs if len(r) >= 2]
    return long_runs[-1] if long_runs else runs[-1]


class SortingTask(Task):
    name = "sorting"
    sizes: ClassVar[dict[str, int]] = {"train": 1000, "heldout": 200}
    seeds: ClassVar[dict[str, int]] = {"train": 20261301, "heldout": 20261302}

    def sample(self, rng: random.Random) -> tuple[Any, str, dict[str, Any]]:
        numbers = rng.sample(range(1, 100), rng.randint(3, 6))
        prompt = PROMPT.format(numbers=", ".join(map(str, numbers)))
        # The same multiset in another order is the same question (same answer).
        return tuple(sorted(numbers)), prompt, {"numbers": numbers, "answer": sorted(numbers)}

    def reward(self, example: Example, completion: str) -> float:
        return 1.0 if parse_list(completion) == example.meta["answer"] else 0.0
