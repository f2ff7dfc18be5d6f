"""The generative verifier's token layout: what it reads and where its verdict is.

A generative verifier is a small causal LM that writes its check of a reply out (for
arithmetic, the column sum with its carry) and ends with a verdict. Why: a scalar reward
model must judge "98 + 15 = 103" against "98 + 15 = 113" in one forward pass, and every score
model measured here ranked a tuned policy's slipped carries at 0.53-0.67 pairwise, however it
was trained; written out, the check is a chain of one-digit steps.

One home for the layout because the trainer (training/verifier.py), the offline scorer and
the server's Best-of-N (server/reward.py) must agree token for token:
- input: one user turn, CHECK_PROMPT with the question and the reply under review;
- output: the worked check, then VERDICT and RIGHT or WRONG;
- score: log p(RIGHT) - log p(WRONG) at the token after VERDICT in the verifier's greedy
  check, so replies rank by how sure the verifier is, not just by its yes/no.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.chat import Messages

CHECK_PROMPT = "Check the reply to this question.\nQuestion: {question}\nReply: {reply}"
VERDICT = " Verdict:"
RIGHT, WRONG = " right", " wrong"
# A check that never reaches a verdict (or a verdict token outside the top log-probs) scores
# as a confident "wrong": a reply the verifier could not vouch for never wins on a default.
FLOOR = -30.0
MAX_CHECK_TOKENS = 96
TOP_LOGPROBS = 20


def check_messages(messages: Messages, reply: str) -> Messages:
    """The verifier's input for one reply to the conversation `messages` (its last user turn)."""
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return [{"role": "user", "content": CHECK_PROMPT.format(question=question, reply=reply.strip())}]


def verdict_score(tokens: Sequence[str], top_logprobs: Sequence[dict[str, float]]) -> float:
    """log p(RIGHT) - log p(WRONG) at the first token after VERDICT in a generated check,
    clipped to [FLOOR, -FLOOR]; FLOOR when the check has no verdict.

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


def completion_score(completion: object) -> float:
    """`verdict_score` of one vLLM CompletionOutput generated with logprobs=TOP_LOGPROBS."""
    steps = getattr(completion, "logprobs", None) or []
    token_ids = list(getattr(completion, "token_ids", []))
    tokens = [step[tid].decoded_token or "" for tid, step in zip(token_ids, steps, strict=False)]
    tops = [{lp.decoded_token or "": lp.logprob for lp in step.values()} for step in steps]
    return verdict_score(tokens, tops)
