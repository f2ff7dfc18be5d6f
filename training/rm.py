"""Reward model: TRL's RewardTrainer (Bradley-Terry on chosen/rejected) on a registry start.

The model is `AutoModelForSequenceClassification` with `num_labels=1` on top of --base; it
scores a whole conversation with the response as the last assistant turn, through the chat
template (`core.chat.reward_ids`, the same text the server's pooling engine scores).

Departures from TRL's `trl reward` script:
1. LoRA on every linear layer *and* the score head trained in full (peft's SEQ_CLS task keeps
   `score` in modules_to_save); the entry is then *merged* into one full checkpoint, because
   vLLM's pooling runner loads reward models as full weights, not as adapters.
2. After writing, the checkpoint is reloaded with transformers and must give the same score
   as the in-memory model on a probe conversation (recorded as metrics `probe_reward`).
3. `--eval-data` pairs (e.g. held-out samples of the policy this model will rerank) are
   evaluated at the end: `eval_accuracy` is the pairwise accuracy.
4. The manifest records what the model is for, `extra.trained_for = {policy, temperature,
   policies}`, from the pairs' `policy` / `temperature` fields (`data prefs` writes them) or
   `--for-policy`: a reward model reranks well only the policy whose samples it learned
   from, at the temperature Best-of-N samples them, and the server pairs them by this link.

Options: training/rm_config.py; command line: training/scripts/rm.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.registry import Entry, RegistryError
from training.common import (
    Start,
    copy_full,
    load_causal_lm,
    load_tokenizer,
    lora_config,
    prepare_run_dir,
    resolve_start,
    save_entry,
    save_trained,
    to_dataset,
    train,
)
from training.rm_config import RMConfig

PROBE_MESSAGES = [{"role": "user", "content": "What is 12 + 35? Reply with just the number."}]
PROBE_RESPONSE = "47"
PROBE_TOLERANCE = 1e-4


def trained_for(rows: list[dict], for_policy: str | None) -> dict[str, Any]:
    """The policy (and sampling temperature) the pairs came from, for the manifest."""
    policies = sorted({str(r["policy"]) for r in rows if r.get("policy")})
    temps = sorted({float(r["temperature"]) for r in rows if r.get("temperature") is not None})
    policy = for_policy or (policies[0] if len(policies) == 1 else None)
    return {
        "policy": policy,
        "temperature": temps[0] if len(temps) == 1 else None,
        "policies": policies,
        "temperatures": temps,
    }


def load_seq_cls(start: Start, scratch: Path):
    """A one-label sequence classifier on --base (a LoRA --base is merged first)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = start.root.path
    if start.is_lora:
        path = scratch / "merged-start"
        merged = load_causal_lm(start, trainable_adapter=False)
        merged.save_pretrained(path, safe_serialization=True)
        del merged
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)


def probe_reward(model, tokenizer) -> float:
    import torch

    from core.chat import reward_ids

    ids = torch.tensor([reward_ids(tokenizer, PROBE_MESSAGES, PROBE_RESPONSE)], device=model.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        value = float(model(input_ids=ids).logits[0, 0])
    model.train(was_training)
    return value


def run(config: RMConfig) -> Entry | None:
    """Train and write the (merged, full) reward entry; returns it (None on non-main processes)."""
    import torch
    import trl
    from transformers import AutoModelForSequenceClassification

    from training.data import data_hash, load_preference_data

    rows, _ = load_preference_data(config.data)
    eval_rows = load_preference_data(config.eval_data)[0] if config.eval_data else None
    digest = data_hash(rows)
    start = resolve_start(config.open_registry(), config.base)
    args = trl.RewardConfig(
        **config.trainer_kwargs(),
        center_rewards_coefficient=config.center_rewards_coefficient,
        per_device_eval_batch_size=config.batch_size,
    )
    run_dir = prepare_run_dir(config, digest, args)

    tokenizer = load_tokenizer(start)
    torch.manual_seed(config.seed)  # the fresh score head
    model = load_seq_cls(start, run_dir)
    # Sequence classification pools the last non-padding token, so a pad id must be set.
    model.config.pad_token_id = tokenizer.pad_token_id
    peft_config = None if config.full else lora_config(config, "SEQ_CLS")  # adds `score` in full
    columns = ["prompt", "chosen", "rejected"]
    trainer = trl.RewardTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(rows, columns),
        eval_dataset=to_dataset(eval_rows, columns) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    metrics = train(trainer, config)
    if eval_rows:
        metrics.update(trainer.evaluate())
    final = save_trained(trainer, config)
    in_memory = None
    if trainer.accelerator.num_processes == 1:
        in_memory = probe_reward(trainer.accelerator.unwrap_model(trainer.model), tokenizer)

    def fill(staging: Path) -> None:
        if config.full:
            copy_full(final, staging)
        else:
            from peft import PeftModel

            base = AutoModelForSequenceClassification.from_pretrained(
                run_dir / "merged-start" if start.is_lora else start.root.path,
                num_labels=1,
                dtype=torch.float32,
            )
            merged = PeftModel.from_pretrained(base, final).merge_and_unload()
            merged.config.pad_token_id = tokenizer.pad_token_id
            merged.save_pretrained(staging, safe_serialization=True)
        reloaded = AutoModelForSequenceClassification.from_pretrained(staging, dtype=torch.float32)
        if reloaded.config.num_labels != 1 or reloaded.config.pad_token_id is None:
            raise RegistryError(
                f"reward checkpoint has num_labels={reloaded.config.num_labels}, "
                f"pad_token_id={reloaded.config.pad_token_id}: expected 1 and a pad id"
            )
        saved = probe_reward(reloaded, tokenizer)
        reference = in_memory if in_memory is not None else saved
        if abs(saved - reference) > PROBE_TOLERANCE:
            raise RegistryError(
                f"reward checkpoint scores the probe {saved:.6f} after saving but "
                f"{reference:.6f} before: the score head or merge was lost"
            )
        metrics["probe_reward"] = saved

    return save_entry(
        config,
        start,
        kind="rm",
        fmt="full",
        final_dir=final,
        data_digest=digest,
        metrics=metrics,
        tokenizer=tokenizer,
        fill=fill,
        extra={
            "probe": {"messages": PROBE_MESSAGES, "response": PROBE_RESPONSE},
            "trained_as": config.format,
            "trained_for": trained_for(rows, config.for_policy),
        },
    )
