"""Reference computations for the tests, independent of the code they check (a test helper:
it lives under tests/, outside the installed packages)."""

from __future__ import annotations

from pathlib import Path


def transformers_rewards(
    model_dir: Path, messages: list[dict[str, str]], responses: list[str]
) -> list[float]:
    """The reference: transformers scores the chat template's *text* of each conversation,
    tokenized without extra special tokens (the server builds token ids its own way)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    scores = []
    with torch.no_grad():
        for response in responses:
            conversation = [*messages, {"role": "assistant", "content": response}]
            text = tokenizer.apply_chat_template(conversation, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            scores.append(float(model(input_ids=ids).logits[0, 0]))
    return scores
