"""Where prompts come from: a built-in task's split, a prompt file, or synthetic text.

Task prompts carry their `Example`, so every delivered answer can be scored by the task's gold
verifier. Synthetic prompts are random words from a fixed list (one BPE token each for common
English words, so `synthetic_input_len` is about the prompt length in tokens; the report gives
the server's exact count). A prompt file is read and checked by training/prompts.py, the
reader `data prefs` and the trainers use: rows with `prompt` (a string or messages) or
`messages`, and optionally `max_tokens`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from loadtests.config import LoadTestConfig
from training.prompts import read_prompt_file
from training.tasks import Example, Task, get_task

_WORDS = (
    "the time people year way day man thing woman life child world school state family "
    "student group country problem hand part place case week company system program "
    "question work government number night point home water room mother area money story "
    "fact month lot right study book eye job word business issue side kind head house "
    "service friend father power hour game line end member law car city community name"
)


@dataclass(frozen=True)
class Prompt:
    index: int
    messages: list[dict[str, str]]
    example: Example | None = None  # what the gold verifier needs (task prompts only)
    max_tokens: int | None = None  # a JSONL line's own limit


def task_of(cfg: LoadTestConfig) -> Task | None:
    return get_task(cfg.task) if cfg.task else None


def load_prompts(cfg: LoadTestConfig) -> list[Prompt]:
    """The distinct prompts of this configuration; request i uses prompt i % len."""
    task = task_of(cfg)
    if task is not None:
        return [Prompt(i, task.messages(ex), ex) for i, ex in enumerate(task.examples(cfg.split))]
    if cfg.prompts_file is not None:
        return _from_file(cfg.prompts_file)
    assert cfg.synthetic_input_len is not None
    rng, words = random.Random(cfg.seed), _WORDS.split()
    return [
        Prompt(
            i,
            [
                {
                    "role": "user",
                    "content": "Continue this text: "
                    + " ".join(rng.choice(words) for _ in range(cfg.synthetic_input_len)),
                }
            ],
        )
        for i in range(cfg.num_requests)
    ]


def _from_file(path: Path) -> list[Prompt]:
    """Rows checked like every other prompt file (training/prompts.py), plus a row's own
    `max_tokens`."""
    return [
        Prompt(i, r.messages, max_tokens=r.row.get("max_tokens"))
        for i, r in enumerate(read_prompt_file(path))
    ]
