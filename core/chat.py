"""The chat / reward-model token layout: what a reward model scores for a conversation.

One home for it because the trainer (TRL's RewardTrainer trains on exactly this text), the
offline evaluators and the server's Best-of-N all have to agree, token for token.
"""

from __future__ import annotations

from typing import Any

Messages = list[dict[str, str]]


def reward_ids(tokenizer: Any, messages: Messages, response: str) -> list[int]:
    """Token ids the reward model scores: the whole conversation with the response appended
    as the last assistant turn, through the chat template, no generation prompt."""
    return list(
        tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": response}],
            tokenize=True,
            add_generation_prompt=False,
            return_dict=False,
        )
    )
