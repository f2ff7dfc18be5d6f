"""Two-digit additions: "What is {a} + {b}? Reply with just the number."

The reference task (base SmolLM2-135M-Instruct: 27% greedy on 300 held-out
prompts). 300 held-out prompts and 2000 train prompts, a and b in 10..99.

Answer parsing is the part that matters. The model often ignores "just the number" and
echoes the sum ("12 + 35 = 47", sometimes followed by prose that repeats the operands), so:
1. if the text has an "=", the answer is the first number after the *last* "=";
2. otherwise it is the *last* number in the text ("The answer is 47.").
A parser that takes the first number reads the echoed operand (12) and scores almost
nothing; one that takes the last number everywhere fails "12 + 35 = 47. This is the sum
of 12 and 35." Thousands separators, whitespace, markdown and a trailing period are
tolerated; "47.0" counts as 47.

Held-out and train never share a question, counting a + b and b + a as the same one.
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar

from training.tasks.base import Example, Task

PROMPT = "What is {a} + {b}? Reply with just the number."

# An optionally signed number: "1,234" (grouped by thousands), "47", "47.5". A trailing
# period is not a decimal point because it must be followed by a digit.
_NUMBER = re.compile(r"[-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def _to_number(text: str) -> float:
    return float(text.replace(",", "").replace("\u2212", "-"))


def parse_answer(text: str) -> float | None:
    """The number the completion answers with, or None if it gives none (see module doc)."""
    if "=" in text:
        match = _NUMBER.search(text.rsplit("=", 1)[1])
        return _to_number(match.group()) if match else None
    numbers = _NUMBER.findall(text)
    return _to_number(numbers[-1]) if numbers else None


class ArithmeticTask(Task):
    name = "arithmetic"
    sizes: ClassVar[dict[str, int]] = {"train": 2000, "heldout": 300}
    seeds: ClassVar[dict[str, int]] = {"train": 20261101, "heldout": 20261102}

    def sample(self, rng: random.Random) -> tuple[Any, str, dict[str, Any]]:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return (min(a, b), max(a, b)), PROMPT.format(a=a, b=b), {"a": a, "b": b, "answer": a + b}

    def reward(self, example: Example, completion: str) -> float:
        value = parse_answer(completion)
        return 1.0 if value is not None and value == example.meta["answer"] else 0.0

    def worked_check(self, meta: dict[str, Any], completion: str) -> str:
        """The column sum with its carry, then the reply's answer as this task parses it:
        "8 + 5 = 13, carry 1. 9 + 1 + 1 = 11. So 98 + 15 = 113. The reply says 26."
        A one-pass scorer has to do the carry in its head; written out, each step is a
        one-digit sum (the reward models' misses are mostly slipped carries)."""
        a, b = int(meta["a"]), int(meta["b"])
        ones = a % 10 + b % 10
        carry = ones // 10
        tens = a // 10 + b // 10 + carry
        value = parse_answer(completion)
        said = "no number" if value is None else (str(int(value)) if value.is_integer() else repr(value))
        return (
            f"{a % 10} + {b % 10} = {ones}, carry {carry}. {a // 10} + {b // 10} + {carry} = {tens}. "
            f"So {a} + {b} = {a + b}. The reply says {said}."
        )
