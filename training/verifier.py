"""Generative verifiers: training rows, the trainer, and offline scoring with vLLM.

The layout (what the verifier reads, where its verdict is) lives in core/verifier.py, shared
with the server. Rows: each reply under review becomes the check prompt, and the target is
the task's worked check (Task.worked_check) followed by the gold verdict, so the verifier
learns to do the check, not to recognise a reply's look. The trainer is SFT (training/sft.py)
on those rows, completion tokens only, every weight (the server runs the verifier as a full
checkpoint); the entry is kind "verifier".

    bonserve train verifier --name verifier-arith --data rows.jsonl --task arithmetic \
        --for-policy arith-ppo-merged --max-steps 240 --batch-size 8 --learning-rate 1e-4

Options: training/verifier_config.py; rows: benchmarks/verifier_data.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from core.chat import Messages
from core.registry import Entry
from core.verifier import (
    CHECK_PROMPT,
    MAX_CHECK_TOKENS,
    RIGHT,
    TOP_LOGPROBS,
    VERDICT,
    WRONG,
    check_messages,
    completion_score,
)
from training.tasks.base import Example, Task
from training.verifier_config import VerifierConfig


def check_target(task: Task, example: Example, reply: str) -> str | None:
    """The text the verifier is trained to write for `reply`: worked check + gold verdict."""
    worked = task.worked_check(example.meta, reply)
    if worked is None:
        return None
    return f"{worked}{VERDICT}{RIGHT if task.reward(example, reply) == 1.0 else WRONG}"


def sft_rows(task: Task, replies: Iterable[tuple[Example, str]]) -> list[dict[str, Any]]:
    """Prompt/completion rows (TRL SFT format) for `bonserve train verifier`, one per reply
    (`label`: its gold reward, for counting; the trainer ignores it)."""
    rows = []
    for example, reply in replies:
        target = check_target(task, example, reply)
        if target is None:
            raise ValueError(f"task {task.name!r} has no worked check to train a verifier on")
        rows.append(
            {
                "id": example.id,
                "prompt": check_messages(task.messages(example), reply),
                "completion": [{"role": "assistant", "content": target}],
                "label": task.reward(example, reply),
            }
        )
    return rows


def score_with_verifier(
    path: Path, items: Sequence[tuple[Messages, str]], *, kv_cache_gib: float = 1.0
) -> list[float]:
    """Verifier score of each (conversation, reply): one greedy check each, batched in vLLM."""
    if not items:
        return []
    from vllm import SamplingParams

    from training.generation import llm_kwargs, open_llm, prompt_ids

    # Best-of-N samples repeat themselves (a tuned policy's 8 samples are often one reply):
    # each distinct check is run once.
    checks = [check_messages(m, r) for m, r in items]
    keys = [tuple(sorted(c[0].items())) for c in checks]
    distinct = list(dict.fromkeys(keys))
    where = {k: i for i, k in enumerate(distinct)}
    with open_llm(llm_kwargs(path, enforce_eager=True, kv_cache_gib=kv_cache_gib)) as llm:
        tokenizer = llm.get_tokenizer()
        prompts = [{"prompt_token_ids": prompt_ids(tokenizer, [dict(k)])} for k in distinct]
        params = SamplingParams(temperature=0.0, max_tokens=MAX_CHECK_TOKENS, logprobs=TOP_LOGPROBS)
        outputs = llm.generate(prompts, params, use_tqdm=True)
        scores = [completion_score(out.outputs[0]) for out in outputs]
    return [scores[where[k]] for k in keys]


def run(config: VerifierConfig) -> Entry | None:
    """SFT on verifier rows, written as a kind "verifier" entry; returns it (None on
    non-main processes)."""
    from training.data import load_sft_data
    from training.sft import fine_tune

    rows, _ = load_sft_data(config.data)
    if not all(is_check_row(row) for row in rows):
        from training.data import DataError

        raise DataError(
            f"{config.data}: not verifier rows (a user turn in core/verifier.py's CHECK_PROMPT layout and "
            "an assistant check ending in the verdict); make them with benchmarks/verifier_data.py"
        )
    labels = [row["completion"][-1]["content"].endswith(RIGHT) for row in rows]
    extra = {
        "verifier": {
            "task": config.task,
            "rows": len(rows),
            "right": sum(labels),
            "wrong": len(labels) - sum(labels),
        },
        "trained_for": {"policy": config.for_policy} if config.for_policy else None,
    }
    return fine_tune(config, rows, extra=extra, kind="verifier")


def is_check_row(row: dict[str, Any]) -> bool:
    """A prompt/completion row in the verifier's layout."""
    prompt, completion = row.get("prompt"), row.get("completion")
    if not (isinstance(prompt, list) and isinstance(completion, list) and prompt and completion):
        return False
    head = CHECK_PROMPT.split("{", 1)[0]
    text = completion[-1].get("content") or ""
    return str(prompt[-1].get("content", "")).startswith(head) and (
        text.endswith(VERDICT + RIGHT) or text.endswith(VERDICT + WRONG)
    )
