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


def transformers_greedy(model_dir: Path, messages: list[dict[str, str]], max_tokens: int) -> str:
    """The reference: transformers' greedy continuation of the chat template's prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
