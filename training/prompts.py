"""Where prompts come from: a built-in task's split, or a prompt file.

A prompt file is JSONL / JSON / Parquet or a saved HF dataset (`training.data.load_rows`)
whose rows hold `prompt` (a string: the user's turn; or messages) or `messages`, messages
ending with a user turn. One reader, `read_prompt_file`, and one row check,
`training.data.messages_of`, serve every consumer, so a file one accepts the others accept,
with the same errors (`prompts.jsonl:3: field 'prompt[0].content': expected a string, got int`):

    bonserve data prefs --prompts FILE        load_prompts (below)
    bonserve train ppo --data FILE            load_prompts (below)
    bonserve train grpo|rloo --prompts FILE   training/online_rl.py: prompt_rows (+ task ids)
    bonserve loadtest --prompts-file FILE     loadtests/prompts.py (+ per-row max_tokens)

Other keys of a row (`id`, `max_tokens`, ...) are left to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from training.data import load_rows, messages_of, row_location


@dataclass
class Prompt:
    id: str
    messages: list[dict[str, str]]
    example: Any = None  # the task Example, when there is a gold verifier


class PromptRow(NamedTuple):
    """One checked row of a prompt file."""

    where: str  # "FILE:LINE" (JSONL) or "FILE: row N", for the caller's own error messages
    row: dict[str, Any]  # the whole row, for the keys a caller reads itself
    messages: list[dict[str, str]]


def read_prompt_file(path: str | Path, n: int | None = None) -> list[PromptRow]:
    """The first `n` rows (all when None) of a prompt file, each checked by `messages_of`."""
    rows = load_rows(path)
    count = min(n, len(rows)) if n else len(rows)
    out = []
    for i in range(count):
        where = row_location(rows, i, rows.source)
        out.append(PromptRow(where, rows[i], messages_of(rows[i], where)))
    return out


def load_prompts(
    *, task: str | None, split: str = "train", n: int | None = None, path: str | Path | None = None
) -> list[Prompt]:
    """The first `n` prompts of a task split (with their gold examples), or of the prompt file
    `path` when `task` is None (ids from the rows' `id`, else the row index)."""
    if task:
        from training.tasks import get_task

        found = get_task(task)
        size = found.sizes[split]
        count = None if n is None else min(n, size)
        return [Prompt(ex.id, found.messages(ex), ex) for ex in found.examples(split, count)]
    assert path is not None, "load_prompts needs a task or a path"
    return [Prompt(str(r.row.get("id", i)), r.messages) for i, r in enumerate(read_prompt_file(path, n))]
