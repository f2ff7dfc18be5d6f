"""Supervised fine-tuning: TRL's SFTTrainer on a registry start, writing a registry entry.

Data: TRL's SFT formats (`messages`, or `prompt`/`completion` as strings or messages; see
training/data.py). With prompt/completion rows the loss covers the completion only (TRL's
default). LoRA (rank 16, every linear layer, nothing saved in full) unless --full; the entry
is the adapter + tokenizer, which vLLM applies to --base's full weights at request time.

Departures from TRL's `trl sft` script:
1. No model hub: --base is a registry entry; a LoRA --base keeps training its adapter (the
   result is still one adapter over the same full checkpoint), or is merged first with --full.
2. CPU-sane defaults: bf16 off, no gradient checkpointing, batch 8, no reporting.

Options: training/sft_config.py; command line: training/scripts/sft.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.registry import Entry
from training.common import (
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
from training.sft_config import SFTConfig


def run(config: SFTConfig) -> Entry | None:
    """Train and write the entry; returns it (None on non-main processes)."""
    from training.data import load_sft_data

    rows, _ = load_sft_data(config.data)
    return fine_tune(config, rows)


def fine_tune(
    config: SFTConfig, rows: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None, kind: str = "sft"
) -> Entry | None:
    """SFT on validated `rows` (TRL's SFT formats); `extra` goes to the manifest (the
    Best-of-N distillation trainer records where its rows came from), `kind` names the entry's
    kind (a generative verifier is trained this way too)."""
    import trl

    from training.data import data_hash

    digest = data_hash(rows)
    start = resolve_start(config.open_registry(), config.base)
    columns = ["messages"] if "messages" in rows[0] else ["prompt", "completion"]
    # `messages` rows have no prompt/completion split: TRL trains on every token (None = auto).
    only_completion = config.completion_only_loss if columns != ["messages"] else None
    args = trl.SFTConfig(**config.trainer_kwargs(), completion_only_loss=only_completion, packing=False)
    prepare_run_dir(config, digest, args)

    tokenizer = load_tokenizer(start)
    continue_adapter = start.is_lora and not config.full
    model = load_causal_lm(start, trainable_adapter=continue_adapter)
    peft_config = None if (config.full or continue_adapter) else lora_config(config, "CAUSAL_LM")
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(rows, columns),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    metrics = train(trainer, config)
    return save_entry(
        config,
        start,
        kind=kind,
        final_dir=save_trained(trainer, config),
        data_digest=digest,
        metrics=metrics,
        tokenizer=tokenizer,
        extra=extra,
    )
