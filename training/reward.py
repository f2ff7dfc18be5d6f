"""Reward models: `*ForSequenceClassification` with one label, scored on full conversations.

`init_reward_model` makes a reward checkpoint from a base policy (transformer copied, score
head freshly initialised with a fixed seed). It is what TRL's RewardTrainer starts from, and
on its own it is a real, vLLM-loadable reward model for plumbing and agreement tests: its
scores are deterministic but carry no preference signal until trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.chat import reward_ids
from core.registry import Manifest, Registry

Messages = list[dict[str, str]]


def init_reward_model(
    registry: Registry, base: str, name: str, *, seed: int = 0, out: Registry | None = None
) -> Path:
    """Write entry `name` (kind rm) built from entry `base`; into `out` if given."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    entry = registry.load(base)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(entry.path)
    model = AutoModelForSequenceClassification.from_pretrained(entry.path, num_labels=1, dtype=torch.float32)
    # Sequence classification pools the last non-padding token, so a pad id must be set.
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    manifest = Manifest(
        name=name,
        kind="rm",
        format="full",
        base_model=entry.manifest.base_model or base,
        parent=base,
        hyperparameters={"init": "random score head", "seed": seed},
    )
    out = out or registry
    with out.write(manifest) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return out.path_of(name)


def transformers_rewards(
    model_dir: Path, messages: list[dict[str, str]], responses: list[str]
) -> list[float]:
    """Reference scores computed with transformers, independently of vLLM (for tests/eval)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    scores = []
    with torch.no_grad():
        for response in responses:
            ids = torch.tensor([reward_ids(tokenizer, messages, response)])
            scores.append(float(model(input_ids=ids).logits[0, 0]))
    return scores


class RewardModelScorer:
    """A reward model kept loaded in this process and scored with transformers, in batches.

    For callers that score again and again (PPO scores every rollout batch); one-off scoring
    of many items is faster on vLLM's pooling runner (training.generation.score_rewards).
    Rows are right-padded: the classifier pools the last non-pad token of each row.
    """

    def __init__(self, model_dir: Path, batch_size: int = 16, device: Any = "cpu"):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        self.model = model.to(device).eval()
        self.pad_id, self.batch_size, self.device = model.config.pad_token_id, batch_size, device

    def __call__(self, items: Sequence[tuple[Messages, str]]) -> list[float]:
        """Raw reward (the score logit) of each (conversation, response)."""
        import torch

        scores: list[float] = []
        with torch.no_grad():
            for i in range(0, len(items), self.batch_size):
                scores.extend(float(x) for x in self.scores(items[i : i + self.batch_size]))
        return scores

    def scores(self, items: Sequence[tuple[Messages, str]]) -> Any:
        """The score logits of one batch as a tensor [len(items)], with autograd when enabled
        (what fine-tuning the model in place needs: training/rm_refresh.py)."""
        import torch

        seqs = [reward_ids(self.tokenizer, m, r) for m, r in items]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        logits: Any = out.logits
        return logits[:, 0]
