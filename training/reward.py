"""Reward models: `*ForSequenceClassification` with one label, scored on full conversations.

`init_reward_model` makes a reward checkpoint from a base policy (transformer copied, score
head freshly initialised with a fixed seed). It is what TRL's RewardTrainer starts from, and
on its own it is a real, vLLM-loadable reward model for plumbing and agreement tests: its
scores are deterministic but carry no preference signal until trained.
"""

from __future__ import annotations

from pathlib import Path

from training.registry import Manifest, Registry


def init_reward_model(registry: Registry, base: str, name: str, *, seed: int = 0,
                      out: Registry | None = None) -> Path:
    """Write entry `name` (kind rm) built from entry `base`; into `out` if given."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    entry = registry.load(base)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(entry.path)
    model = AutoModelForSequenceClassification.from_pretrained(
        entry.path, num_labels=1, dtype=torch.float32
    )
    # Sequence classification pools the last non-padding token, so a pad id must be set.
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    manifest = Manifest(
        name=name, kind="rm", format="full", base_model=entry.manifest.base_model or base,
        parent=base, hyperparameters={"init": "random score head", "seed": seed},
    )
    out = out or registry
    with out.write(manifest) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return out.path_of(name)


def reward_text(tokenizer, messages: list[dict[str, str]], response: str) -> list[int]:
    """Token ids the reward model scores: the whole conversation with the response appended,
    through the chat template (the same text TRL's RewardTrainer trains on)."""
    return list(tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": response}],
        tokenize=True, add_generation_prompt=False, return_dict=False,
    ))


def transformers_rewards(model_dir: Path, messages: list[dict[str, str]],
                         responses: list[str]) -> list[float]:
    """Reference scores computed with transformers, independently of vLLM (for tests/eval)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    scores = []
    with torch.no_grad():
        for response in responses:
            ids = torch.tensor([reward_text(tokenizer, messages, response)])
            scores.append(float(model(input_ids=ids).logits[0, 0]))
    return scores
