"""Supervised fine-tuning: a thin script over TRL's SFTTrainer that writes a registry entry.

    bonserve train sft --data sft.jsonl --name arith-sft --max-steps 60
    python -m training.sft --data sft.jsonl --name arith-sft              # same thing
    accelerate launch -m training.sft --data sft.jsonl --name arith-sft   # several GPUs
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m training.sft ...     # 2 CPU processes (gloo)

Data: TRL's SFT formats (`messages`, or `prompt`/`completion` as strings or messages; see
training/data.py). With prompt/completion rows the loss covers the completion only (TRL's
default). LoRA (rank 16, every linear layer, nothing saved in full) unless --full; the entry
is the adapter + tokenizer, which vLLM applies to --base's full weights at request time.

Departures from TRL's `trl sft` script:
1. No model hub: --base is a registry entry; a LoRA --base keeps training its adapter (the
   result is still one adapter over the same full checkpoint), or is merged first with --full.
2. CPU-sane defaults: bf16 off, no gradient checkpointing, batch 8, no reporting.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field

from core.flags import add_flags
from core.registry import Entry
from training.common import (
    TrainConfig,
    copy_adapter,
    copy_full,
    load_causal_lm,
    load_tokenizer,
    lora_config,
    prepare_run_dir,
    resolve_start,
    run_main,
    save_trained,
    to_dataset,
    train,
    write_entry,
)


@dataclass
class SFTConfig(TrainConfig):
    """`bonserve train sft` options (the shared ones are documented on TrainConfig)."""

    completion_only_loss: bool = field(
        default=True, metadata={"help": "With prompt/completion data, train on completion tokens only."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()


def run(config: SFTConfig) -> Entry | None:
    """Train and write the entry; returns it (None on non-main processes)."""
    import trl

    from training.data import data_hash, load_sft_data

    rows, _ = load_sft_data(config.data)
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
    final = save_trained(trainer, config)
    fmt = "full" if config.full else "lora"
    return write_entry(
        config,
        start,
        kind="sft",
        fmt=fmt,
        data_digest=digest,
        metrics=metrics,
        tokenizer=tokenizer,
        fill=lambda staging: (copy_full if fmt == "full" else copy_adapter)(final, staging),
    )


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="bonserve train sft", description=__doc__.splitlines()[0])
    return add_flags(parser, SFTConfig)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(SFTConfig, run, make_parser(), argv, args)


if __name__ == "__main__":
    raise SystemExit(main())
