"""A generative verifier: a small LM that writes its check out before it gives a verdict.

Why: a scalar reward model must judge "98 + 15 = 26" against "98 + 15 = 113" in one forward
pass. On the PPO policy's samples 71% of the (right, wrong) pairs are a slipped carry, and
every score model measured ranks those at 0.53-0.67 however it is trained. Written out, the
check is a chain of one-digit steps the same 135M model can learn (generative verifiers,
Zhang et al. 2024; process supervision, Lightman et al. 2023).

The layout, one home for trainer and scorer:
- input: one user turn, CHECK_PROMPT with the question and the reply under review;
- output: the task's worked check (Task.worked_check), then VERDICT and " right" or " wrong";
- score: log p(" right") - log p(" wrong") at the verdict token of the verifier's greedy
  check, so replies rank by how sure the verifier is, not just by its yes/no.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from core.chat import Messages
from training.tasks.base import Example, Task

CHECK_PROMPT = "Check the reply to this question.\nQuestion: {question}\nReply: {reply}"
VERDICT = " Verdict:"
RIGHT, WRONG = " right", " wrong"
# A check that never reaches a verdict (or a verdict token outside the top log-probs) scores
# as a confident "wrong": a reply the verifier could not vouch for never wins on a default.
FLOOR = -30.0
MAX_CHECK_TOKENS = 96
TOP_LOGPROBS = 20


def check_messages(messages: Messages, reply: str) -> Messages:
    """The verifier's input for one reply to the conversation `messages` (last user turn)."""
    question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return [{"role": "user", "content": CHECK_PROMPT.format(question=question, reply=reply.strip())}]


def check_target(task: Task, example: Example, reply: str) -> str | None:
    """The text the verifier is trained to write for `reply`: worked check + gold verdict."""
    worked = task.worked_check(example.meta, reply)
    if worked is None:
        return None
    return f"{worked}{VERDICT}{RIGHT if task.reward(example, reply) == 1.0 else WRONG}"


def sft_rows(task: Task, replies: Iterable[tuple[Example, str]]) -> list[dict[str, Any]]:
    """Prompt/completion rows (TRL SFT format) for `bonserve train sft`, one per reply."""
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


def verdict_score(tokens: Sequence[str], top_logprobs: Sequence[dict[str, float]]) -> float:
    """log p(right) - log p(wrong) at the first token after VERDICT in a generated check.

    `tokens[i]` is the i-th generated token's text and `top_logprobs[i]` maps candidate
    token texts to their log-probabilities at that position."""
    text = ""
    for i, token in enumerate(tokens):
        if text.endswith(VERDICT):
            right = top_logprobs[i].get(RIGHT, FLOOR)
            wrong = top_logprobs[i].get(WRONG, FLOOR)
            return max(FLOOR, min(-FLOOR, right - wrong))
        text += token
    return FLOOR


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
        scores = []
        for out in outputs:
            completion = out.outputs[0]
            steps = completion.logprobs or []
            tokens = [
                step[tid].decoded_token or "" for tid, step in zip(completion.token_ids, steps, strict=False)
            ]
            tops = [{lp.decoded_token or "": lp.logprob for lp in step.values()} for step in steps]
            scores.append(verdict_score(tokens, tops))
    return [scores[where[k]] for k in keys]


def probability_right(score: float) -> float:
    """The verifier's p(right | right or wrong) from a score (for reading, not ranking)."""
    return 1.0 / (1.0 + math.exp(-score))
