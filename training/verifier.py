"""Generative verifiers: training rows, the trainer, and scoring (vLLM offline, transformers in-process).

The layout (what the verifier reads, where its verdict is) lives in core/verifier.py, shared
with the server. Rows: each reply under review becomes the check prompt, and the target is
the task's worked check (Task.worked_check) followed by the gold verdict, so the verifier
learns to do the check, not to recognise a reply's look. The trainer is SFT (training/sft.py)
on those rows, completion tokens only, every weight (the server runs the verifier as a full
checkpoint); the entry is kind "verifier".

    bonserve train verifier --full --name verifier-arith --data rows.jsonl --task arithmetic \
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
    FLOOR,
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
    keys = [check_messages(m, r)[0]["content"] for m, r in items]
    distinct = list(dict.fromkeys(keys))
    with open_llm(llm_kwargs(path, enforce_eager=True, kv_cache_gib=kv_cache_gib)) as llm:
        tokenizer = llm.get_tokenizer()
        prompts = [
            {"prompt_token_ids": prompt_ids(tokenizer, [{"role": "user", "content": c}])} for c in distinct
        ]
        params = SamplingParams(temperature=0.0, max_tokens=MAX_CHECK_TOKENS, logprobs=TOP_LOGPROBS)
        outputs = llm.generate(prompts, params, use_tqdm=True)
        scores = dict(zip(distinct, (completion_score(out.outputs[0]) for out in outputs), strict=True))
    return [scores[k] for k in keys]


class TransformersVerifier:
    """A verifier kept loaded in this process, checking replies with transformers' greedy
    generate in left-padded batches: for callers that score again and again (PPO scores every
    rollout batch); one-off scoring of many replies is faster with `score_with_verifier`."""

    def __init__(self, model_dir: Path, batch_size: int = 32, device: Any = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
        self.batch_size, self.device = batch_size, device
        self.pad_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        self.verdict = self.tokenizer.encode(VERDICT, add_special_tokens=False)
        (self.right,) = self.tokenizer.encode(RIGHT, add_special_tokens=False)
        (self.wrong,) = self.tokenizer.encode(WRONG, add_special_tokens=False)

    def __call__(self, items: Sequence[tuple[Messages, str]]) -> list[float]:
        """The verdict score (core/verifier.py) of each (conversation, reply); each distinct
        check is run once."""
        keys = [check_messages(m, r)[0]["content"] for m, r in items]
        distinct = list(dict.fromkeys(keys))
        scores: dict[str, float] = {}
        for i in range(0, len(distinct), self.batch_size):
            batch = distinct[i : i + self.batch_size]
            scores.update(zip(batch, self._checks(batch), strict=True))
        return [scores[k] for k in keys]

    def _checks(self, contents: Sequence[str]) -> list[float]:
        import torch

        seqs = [
            list(
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": c}],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=False,
                )
            )
            for c in contents
        ]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):  # left padding: every row's next token is at the end
            ids[j, width - len(s) :] = torch.tensor(s)
            mask[j, width - len(s) :] = 1
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=MAX_CHECK_TOKENS,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=self.pad_id,
            )
        new = out.sequences[:, width:].tolist()
        k = len(self.verdict)
        result = []
        for j, tokens in enumerate(new):
            score = FLOOR
            for t in range(k, len(tokens)):
                if tokens[t - k : t] == self.verdict:
                    lp = torch.log_softmax(out.scores[t][j].float(), dim=-1)
                    score = max(FLOOR, min(-FLOOR, float(lp[self.right] - lp[self.wrong])))
                    break
            result.append(score)
        return result


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
