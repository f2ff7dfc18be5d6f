"""TrainConfig: the options every trainer shares (`bonserve train sft|rm|dpo|ppo|grpo|rloo`).

Each algorithm's config subclasses it in its own file (training/<algo>_config.py, as TRL keeps
`trainer/dpo_config.py`): a dataclass with one `metadata={"help": ...}` per field. The flags
of the entry points (training/scripts/) come from these dataclasses (`core.flags`), so
`--help` prints the text the code documents; `--config recipe.yaml` sets any field and flags
given on the command line override it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.flags import ConfigError
from core.lora import VLLM_LORA_RANKS
from core.registry import DEFAULT_MODEL_NAME, Registry, RegistryError, bonserve_home


@dataclass
class TrainConfig:
    """Fields every trainer shares. Subclasses add their algorithm's own."""

    data: str = field(metadata={"help": "Training data: JSONL / JSON / Parquet file or a save_to_disk dir."})
    name: str = field(metadata={"help": "Name of the registry entry to write."})
    base: str = field(
        default=DEFAULT_MODEL_NAME,
        metadata={
            "help": "Registry entry to start from (a full checkpoint, or a LoRA entry whose adapter is "
            "trained further / merged with --full)."
        },
    )
    registry: str | None = field(
        default=None, metadata={"help": "Registry directory (default $BONSERVE_HOME/registry)."}
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Run directory for trainer state and checkpoints (default $BONSERVE_HOME/runs/NAME)."
        },
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue from the last checkpoint in the run directory."}
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Delete an existing run directory first (otherwise a run with checkpoints is refused "
            "unless --resume)."
        },
    )
    full: bool = field(default=False, metadata={"help": "Full fine-tuning instead of LoRA."})
    lora_r: int = field(
        default=16, metadata={"help": f"LoRA rank; vLLM serves ranks {', '.join(map(str, VLLM_LORA_RANKS))}."}
    )
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default 2 × rank)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    max_steps: int = field(default=60, metadata={"help": "Optimizer steps to train."})
    max_time_s: float | None = field(
        default=None,
        metadata={
            "help": "Also stop once training has run this many seconds (checked after each step; the "
            "checkpoint and entry are written as usual): a compute budget for comparing methods "
            "at equal wall time. The learning-rate schedule still spans --max-steps."
        },
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate (default 2e-4 with LoRA, 1e-5 with --full)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Examples (or pairs) per device per step."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches accumulated per optimizer step."}
    )
    max_length: int = field(default=512, metadata={"help": "Longest tokenized example kept/truncated."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps."})
    logging_steps: int = field(default=5, metadata={"help": "Log (and print) metrics every N steps."})
    save_steps: int = field(default=20, metadata={"help": "Write a resumable checkpoint every N steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Keep at most N checkpoints in the run dir."})
    seed: int = field(default=0, metadata={"help": "Seed of data order and initialisation."})
    bf16: bool = field(
        default=False,
        metadata={"help": "bf16 mixed precision (GPU). Off by default: TRL on CPU needs bf16=False."},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute activations (saves memory, ~20% slower; off: the default model is small)."
        },
    )
    merge: bool = field(
        default=False,
        metadata={
            "help": "With LoRA: also write NAME-merged, the adapter merged into full weights (what to "
            "serve on CPU, where vLLM decodes LoRA several times slower than the base; "
            "`bonserve registry merge` does the same later)."
        },
    )

    def __post_init__(self) -> None:
        from core.registry import check_name

        if not str(self.data).strip():
            raise ConfigError(f"data={self.data!r}: give the training data file or directory")
        try:
            check_name(self.name)
            check_name(self.base)
        except RegistryError as exc:
            raise ConfigError(str(exc)) from None
        if self.lora_r not in VLLM_LORA_RANKS:
            raise ConfigError(f"lora_r={self.lora_r!r}: vLLM can only serve LoRA ranks {VLLM_LORA_RANKS}")
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r
        if self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha={self.lora_alpha!r}: must be positive")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout={self.lora_dropout!r}: must lie in [0, 1)")
        for key in (
            "max_steps",
            "batch_size",
            "gradient_accumulation_steps",
            "max_length",
            "logging_steps",
            "save_steps",
            "save_total_limit",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key}={value!r}: must be an integer >= 1")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps={self.warmup_steps!r}: must be >= 0")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ConfigError(f"max_time_s={self.max_time_s!r}: must be > 0 seconds")
        if self.learning_rate is None:
            self.learning_rate = 1e-5 if self.full else 2e-4
        if not 0.0 < self.learning_rate < 1.0:
            raise ConfigError(f"learning_rate={self.learning_rate!r}: must lie in (0, 1)")
        if self.resume and self.overwrite:
            raise ConfigError("resume=True and overwrite=True: choose one")

    # --- derived ------------------------------------------------------------------------

    @property
    def format(self) -> str:
        return "full" if self.full else "lora"

    def run_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else bonserve_home() / "runs" / self.name

    def open_registry(self) -> Registry:
        return Registry(self.registry) if self.registry else Registry()

    def trainer_kwargs(self) -> dict[str, Any]:
        """The TrainingArguments every TRL config here gets (CPU-sane; same under accelerate)."""
        return {
            "output_dir": str(self.run_dir()),
            "max_steps": self.max_steps,
            "learning_rate": self.learning_rate,
            "per_device_train_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "warmup_steps": self.warmup_steps,
            "lr_scheduler_type": "linear",
            "logging_steps": self.logging_steps,
            "save_strategy": "steps",
            "save_steps": self.save_steps,
            "save_total_limit": self.save_total_limit,
            "seed": self.seed,
            "bf16": self.bf16,
            "fp16": False,
            "gradient_checkpointing": self.gradient_checkpointing,
            "report_to": "none",
            "dataloader_num_workers": 0,
            "max_length": self.max_length,
        }
