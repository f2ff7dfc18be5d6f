"""Direct Preference Optimization: a thin script over TRL's DPOTrainer.

    bonserve data prefs --policy smollm2-135m-instruct --task arithmetic --n-prompts 600 -k 8 \\
        --out prefs.jsonl
    bonserve train dpo --data prefs.jsonl --name arith-dpo --max-steps 60
    accelerate launch -m training.dpo --data prefs.jsonl --name arith-dpo   # several GPUs
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m training.dpo ...     # 2 CPU processes (gloo)

The recipe of DESIGN.md section 5 is the default: LoRA r=16 on every linear layer, beta 0.1,
lr 2e-4, batch 8, 60 steps (~7 min on 2 cores; 27% -> 58% greedy on held-out additions).
Metrics keep TRL's names: `loss`, `rewards/chosen`, `rewards/rejected`, `rewards/margins`,
`rewards/accuracies`, `logps/chosen`, ...

The reference policy pi_ref is --base:
- a full --base with LoRA: the same model with the adapter disabled (TRL's PEFT path);
- a LoRA --base (e.g. an SFT adapter): its adapter keeps training and TRL keeps a frozen copy
  of it as the reference, so the entry is still one adapter over the same full checkpoint;
- --full: a second, frozen copy of --base (merged, if --base is LoRA).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field

from core.flags import add_flags
from core.registry import Entry
from training.common import (
    ConfigError,
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

LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "robust",
    "bco_pair",
    "sppo_hard",
    "apo_zero",
    "apo_down",
    "sigmoid_norm",
)


@dataclass
class DPOConfig(TrainConfig):
    """`bonserve train dpo` options (the shared ones are documented on TrainConfig)."""

    beta: float = field(
        default=0.1,
        metadata={
            "help": "Strength of the KL pull toward the reference; the implicit reward is "
            "beta*log(pi/pi_ref)."
        },
    )
    loss_type: str = field(
        default="sigmoid",
        metadata={"help": f"TRL DPO loss: one of {', '.join(LOSS_TYPES)} (sigmoid = the DPO paper's)."},
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "Assumed probability that a pair's labels are flipped (robust/cDPO); 0 = plain DPO."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            raise ConfigError(f"beta={self.beta!r}: must be > 0")
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type={self.loss_type!r}: use one of {LOSS_TYPES}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing={self.label_smoothing!r}: must lie in [0, 0.5)")


def run(config: DPOConfig) -> Entry | None:
    """Train and write the entry; returns it (None on non-main processes)."""
    import trl

    from training.data import data_hash, load_preference_data

    rows, _ = load_preference_data(config.data)
    digest = data_hash(rows)
    start = resolve_start(config.open_registry(), config.base)
    args = trl.DPOConfig(
        **config.trainer_kwargs(),
        beta=config.beta,
        loss_type=[config.loss_type],
        label_smoothing=config.label_smoothing,
    )
    prepare_run_dir(config, digest, args)

    tokenizer = load_tokenizer(start)
    continue_adapter = start.is_lora and not config.full
    model = load_causal_lm(start, trainable_adapter=continue_adapter)
    ref_model = load_causal_lm(start, trainable_adapter=False) if config.full else None
    peft_config = None if (config.full or continue_adapter) else lora_config(config, "CAUSAL_LM")
    columns = ["prompt", "chosen", "rejected"]
    trainer = trl.DPOTrainer(
        model=model,
        ref_model=ref_model,
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
        kind="dpo",
        fmt=fmt,
        data_digest=digest,
        metrics=metrics,
        tokenizer=tokenizer,
        fill=lambda staging: (copy_full if fmt == "full" else copy_adapter)(final, staging),
    )


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="bonserve train dpo", description=__doc__.splitlines()[0])
    return add_flags(parser, DPOConfig)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(DPOConfig, run, make_parser(), argv, args)


if __name__ == "__main__":
    raise SystemExit(main())
