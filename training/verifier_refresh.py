"""A generative verifier refreshed on the policy's own rollouts while PPO trains: the verifier
counterpart of training/rm_refresh.py (training/ppo.py picks it when --reward-model is a
kind "verifier" entry and --rm-refresh-every is set).

A score model learns from comparisons; a verifier learns from single replies: each rollout,
judged by the task's gold labels, becomes one check row (the task's worked check and the gold
verdict, training/verifier.py `check_target`), exactly the rows `bonserve train verifier`
trained it on. So a refresh is a few steps of supervised fine-tuning:

1. every rollout PPO scored since the last refresh is kept as a `Check` with the verifier's
   p(right) at the time it was scored: on-policy and unseen, the honest measure of how well
   the verifier still judges this policy (`rm_refresh/verdict_accuracy_before`);
2. the new checks join the buffer of every check gathered so far;
3. the verifier is fine-tuned in place (every weight, next-token cross-entropy on the check
   and verdict tokens only, as the SFT trainer does) for --rm-refresh-steps mini-batches,
   --rm-refresh-new-share of each from the new checks and the rest from the buffer and the
   rows it was first trained on (--rm-refresh-replay: a verifier rows file);
4. its loss on the new checks is measured before and after (a forward pass, no decoding).

Only --rm-refresh-source rollouts: the rollouts are judged and scored anyway, so a refresh
costs its optimizer steps and nothing else; --rm-refresh-pairs is not used (no pairs).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.chat import Messages
from core.verifier import RIGHT, check_messages
from training.rm_refresh import RewardRefresher
from training.tasks.base import Example, Task


@dataclass(frozen=True)
class Check:
    """One reply under review: the check prompt the verifier reads, the text it is trained to
    write (worked check + gold verdict), the gold label, and the verifier's p(right) when PPO
    scored the reply (None for replayed rows)."""

    content: str
    target: str
    right: bool
    p_right: float | None = None


def rollout_checks(
    task: Task,
    judged: Sequence[tuple[Messages, str, Example | None, float]],
) -> list[Check]:
    """A Check per distinct (conversation, reply, task example, verifier p(right)); replies
    without a task example or a worked check are left out (nothing to train on)."""
    from training.verifier import check_target

    out: dict[str, Check] = {}
    for messages, reply, example, p_right in judged:
        if example is None:
            continue
        target = check_target(task, example, reply)
        if target is None:
            continue
        content = check_messages(messages, reply)[0]["content"]
        out.setdefault(content, Check(content, target, target.endswith(RIGHT), p_right))
    return list(out.values())


def replay_checks(path: str | Path) -> list[Check]:
    """The rows a verifier was trained on (a verifier rows file, benchmarks/verifier_data.py)."""
    from training.data import DataError, load_sft_data
    from training.verifier import is_check_row

    rows, _ = load_sft_data(path)
    if not all(is_check_row(row) for row in rows):
        raise DataError(
            f"{path}: --rm-refresh-replay for a verifier takes verifier rows (benchmarks/verifier_data.py)"
        )
    return [
        Check(row["prompt"][-1]["content"], text, text.endswith(RIGHT))
        for row in rows
        for text in [row["completion"][-1]["content"]]
    ]


def verdict_accuracy(checks: Sequence[Check]) -> float:
    """Share of checks (with a recorded p(right)) whose verdict, p(right) > 0.5, is the gold one."""
    verdicts = [(c.p_right > 0.5) == c.right for c in checks if c.p_right is not None]
    return sum(verdicts) / len(verdicts) if verdicts else float("nan")


def encode(tokenizer: Any, check: Check) -> tuple[list[int], int]:
    """(token ids of the check conversation with its target, how many of them are prompt):
    the prompt exactly as the verifier reads it when scoring (training/verifier.py)."""
    user = [{"role": "user", "content": check.content}]
    template = tokenizer.apply_chat_template
    prompt = list(template(user, add_generation_prompt=True, tokenize=True, return_dict=False))
    reply = {"role": "assistant", "content": check.target}
    full = list(template([*user, reply], tokenize=True, return_dict=False))
    if full[: len(prompt)] != prompt:
        raise ValueError("the chat template does not extend the check prompt with the reply")
    return full, len(prompt)


def check_loss(model: Any, tokenizer: Any, checks: Sequence[Check]) -> Any:
    """Mean next-token cross-entropy over the target tokens of `checks` (one padded batch)."""
    import torch

    encoded = [encode(tokenizer, c) for c in checks]
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    for j, (row, n_prompt) in enumerate(encoded):  # right padding: positions as in training
        ids[j, : len(row)] = torch.tensor(row)
        mask[j, : len(row)] = 1
        labels[j, n_prompt : len(row)] = torch.tensor(row[n_prompt:])
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1).to(device), ignore_index=-100
    )


class VerifierRefresher(RewardRefresher):
    """The check buffer and the fine-tuning of one in-memory verifier
    (training.verifier.TransformersVerifier). Mini-batches are drawn as RewardRefresher draws
    comparisons; `buffer`, `pending` and `replay` hold Checks."""

    eval_batch_size = 16

    def refresh(self, scorer: Any, new: list[Any]) -> dict[str, float]:
        """Steps 1-4 of the module docstring; the metrics, under `rm_refresh/`."""
        model, tokenizer = scorer.model, scorer.tokenizer
        before = self.mean_loss(model, tokenizer, new)
        self.buffer.extend(new)
        self.refreshes += 1
        batches = self.batches(new, random.Random(self.seed * 7_919 + self.refreshes))
        losses = self.fit(model, batches, lambda batch: check_loss(model, tokenizer, batch))
        return {
            "rm_refresh/checks": float(len(new)),
            "rm_refresh/checks_wrong": float(sum(not c.right for c in new)),
            "rm_refresh/checks_total": float(len(self.buffer)),
            "rm_refresh/replay_checks": float(len(self.replay)),
            "rm_refresh/verdict_accuracy_before": verdict_accuracy(new),
            "rm_refresh/check_loss_before": before,
            "rm_refresh/check_loss_after": self.mean_loss(model, tokenizer, new),
            "rm_refresh/loss": sum(losses) / len(losses) if losses else float("nan"),
        }

    def mean_loss(self, model: Any, tokenizer: Any, checks: Sequence[Check]) -> float:
        """check_loss over `checks` in batches, weighted by batch size (NaN with none)."""
        import torch

        if not checks:
            return float("nan")
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(checks), self.eval_batch_size):
                part = checks[i : i + self.eval_batch_size]
                total += float(check_loss(model, tokenizer, part)) * len(part)
        return total / len(checks)

    # --- checkpoints: the buffer beside the verifier's weights (RewardRefresher.save/load) ---

    buffer_file = "checks.jsonl"

    @staticmethod
    def to_row(item: Any) -> dict[str, Any]:
        return asdict(item)

    @staticmethod
    def read_rows(path: Path) -> list[Any]:
        return read_checks(path)


def read_checks(path: Path) -> list[Check]:
    return [Check(**json.loads(line)) for line in path.read_text().splitlines()]
