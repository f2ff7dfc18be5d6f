"""What `sft.py`, `rm.py` and `dpo.py` share: the common config, the CLI built from it, loading
the starting model from the registry, LoRA settings vLLM can serve, and writing the entry.

Each trainer script is `XConfig` (a dataclass, one `metadata={"help": ...}` per field) +
`make_parser()` + `main()` + `run(config)`, like TRL's scripts. The flags come from the
dataclass, so `--help` prints the same text the code documents; `--config recipe.yaml` sets
any field and flags given on the command line override it.

Nothing heavy is imported at module level: `bonserve --help` must stay fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.flags import ConfigError, config_from_args
from core.lora import ADAPTER_FILES, VLLM_LORA_RANKS, check_servable_adapter, full_weights_of
from core.registry import DEFAULT_MODEL_NAME, Entry, Registry, RegistryError, bonserve_home

RUN_INFO = "bonserve_run.json"


# --------------------------------------------------------------------------- config


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


def run_main(
    cls: type,
    run: Callable[[Any], Entry],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    args: argparse.Namespace | None = None,
) -> int:
    """Parse, build the config, run; user errors print one line and return 1."""
    from training.data import DataError

    if args is None:
        args = parser.parse_args(argv)
    try:
        config = config_from_args(cls, args)
        entry = run(config)
    except (ConfigError, DataError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if entry is not None:
        print(f"[{entry.manifest.kind}] wrote registry entry {entry.name!r}: {entry.path}")
        print(json.dumps(entry.manifest.metrics, indent=2, sort_keys=True))
    return 0


# --------------------------------------------------------------------------- models from the registry


@dataclass
class Start:
    """Where a run starts: the entry named by --base, and the full checkpoint under it."""

    entry: Entry  # --base
    root: Entry  # the full-weights entry (== entry unless --base is a LoRA entry)

    @property
    def is_lora(self) -> bool:
        return self.entry.manifest.format == "lora"

    @property
    def base_model_name(self) -> str:
        return self.root.name


def resolve_start(registry: Registry, base: str) -> Start:
    entry = registry.load(base)
    return Start(entry=entry, root=full_weights_of(registry, entry))


def load_causal_lm(start: Start, *, trainable_adapter: bool):
    """The starting policy. For a LoRA --base: a PeftModel whose adapter keeps training
    (`trainable_adapter`), or the adapter merged into full weights otherwise."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(start.root.path, dtype=torch.float32)
    if not start.is_lora:
        return model
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, start.entry.path, is_trainable=trainable_adapter)
    return model if trainable_adapter else model.merge_and_unload()


def load_tokenizer(start: Start):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(start.entry.path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def lora_config(config: TrainConfig, task_type: str):
    """LoRA on every linear layer of the transformer (peft's "all-linear" leaves the output
    head alone) and nothing saved in full: the adapter vLLM can load."""
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",
        bias="none",
    )


# --------------------------------------------------------------------------- run directory


def process_state(args: Any = None) -> Any:
    """accelerate's process state. Pass the TRL config first: building it is what sets up the
    (possibly distributed) state, so asking before would see a single process."""
    from accelerate import PartialState

    if args is not None:
        _ = args.device  # TrainingArguments._setup_devices
    return PartialState()


def prepare_run_dir(config: TrainConfig, data_digest: str, args: Any = None) -> Path:
    """Create (or reuse, with --resume) the run directory; refuse to mix runs silently.
    Under `accelerate launch` only the main process touches files."""
    state = process_state(args)
    run_dir = config.run_dir()
    info_path = run_dir / RUN_INFO
    has_checkpoints = run_dir.is_dir() and any(run_dir.glob("checkpoint-*"))
    if config.overwrite and run_dir.exists():
        if state.is_main_process:
            shutil.rmtree(run_dir)
        state.wait_for_everyone()
        has_checkpoints = False
    if config.resume:
        if not has_checkpoints:
            raise ConfigError(f"resume=True but run directory {run_dir} has no checkpoint-* to resume from")
        if info_path.is_file():
            before = json.loads(info_path.read_text())
            if before.get("data_hash") != data_digest:
                raise ConfigError(
                    f"resume=True but --data {config.data!r} differs from the data the run in "
                    f"{run_dir} started with (hash {before.get('data_hash', '?')[:12]})"
                )
    elif has_checkpoints:
        raise ConfigError(
            f"run directory {run_dir} already holds checkpoints: pass --resume to continue, "
            "--overwrite to start again, or another --output-dir"
        )
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        info_path.write_text(
            json.dumps(
                {"data_hash": data_digest, "config": dataclasses.asdict(config)}, indent=2, sort_keys=True
            )
        )
    state.wait_for_everyone()
    return run_dir


def final_metrics(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last value of every logged metric (later logs win), TRL's names kept."""
    out: dict[str, Any] = {}
    for record in log_history:
        for key, value in record.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = value
    out.pop("epoch", None)
    return out


def to_dataset(rows: Sequence[dict[str, Any]], columns: Sequence[str]):
    """An HF Dataset of just the TRL columns (extra keys such as scores would otherwise reach
    the trainer; a `margin` column, for one, changes RewardTrainer's loss)."""
    from datasets import Dataset

    return Dataset.from_list([{c: row[c] for c in columns if c in row} for row in rows])


# --------------------------------------------------------------------------- training and saving


def train(trainer, config: TrainConfig) -> dict[str, Any]:
    """`trainer.train()` (resuming from the run directory's last checkpoint with --resume);
    returns the final metrics."""
    resume: str | None = None
    if config.resume:
        from transformers.trainer_utils import get_last_checkpoint

        resume = get_last_checkpoint(str(config.run_dir()))
        if resume is None:
            raise ConfigError(f"resume=True but {config.run_dir()} has no complete checkpoint")
        print(f"[{config.name}] resuming from {resume}", flush=True)
    trainer.add_callback(_log_last_step())
    if config.max_time_s is not None:
        trainer.add_callback(_wall_clock_budget(config.max_time_s))
    trainer.train(resume_from_checkpoint=resume)
    return final_metrics(trainer.state.log_history)


def _log_last_step():
    """A callback that also logs the last step, so the manifest's `loss` and `rewards/*` are
    the final values and not those of the last multiple of logging_steps."""
    from transformers import TrainerCallback

    class LogLastStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_log = True
            return control

    return LogLastStep()


def _wall_clock_budget(seconds: float) -> Any:
    """A callback that ends training (logging and saving that step) once `seconds` have passed
    since this process began training; a resumed run gets the budget afresh. Under a
    distributed launcher the main process's clock decides for all, so no rank stops alone."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list
    from transformers import TrainerCallback

    class WallClockBudget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            spent = [time.monotonic() - self.start >= seconds]
            if PartialState().num_processes > 1:
                broadcast_object_list(spent, from_process=0)
            if spent[0] and state.global_step < state.max_steps:
                print(f"[budget] {seconds:g} s reached at step {state.global_step}: stopping", flush=True)
                control.should_training_stop = control.should_log = control.should_save = True
            return control

    return WallClockBudget()


def save_trained(trainer, config: TrainConfig) -> Path:
    """`trainer.save_model` into RUN_DIR/final (collective: gathers FSDP/DeepSpeed shards;
    files are written by the main process only)."""
    final = config.run_dir() / "final"
    trainer.save_model(str(final))
    trainer.accelerator.wait_for_everyone()
    return final


def write_entry(
    config: TrainConfig,
    start: Start,
    *,
    kind: str,
    fmt: str,
    data_digest: str,
    metrics: dict[str, Any],
    fill: Callable[[Path], None],
    tokenizer,
    extra: dict[str, Any] | None = None,
) -> Entry | None:
    """Write one registry entry from the main process (None on the others).

    `fill(staging)` puts the weights in; the tokenizer is added here; a LoRA entry is
    refused unless vLLM could serve its adapter.
    """
    from core.registry import Manifest

    state = process_state()
    registry = config.open_registry()
    entry = None
    if state.is_main_process:
        manifest = Manifest(
            name=config.name,
            kind=kind,
            format=fmt,
            base_model=start.base_model_name,
            parent=start.entry.name,
            data_hash=data_digest,
            hyperparameters=dataclasses.asdict(config),
            metrics=metrics,
            extra=extra or {},
        )
        with registry.write(manifest) as staging:
            fill(staging)
            tokenizer.save_pretrained(staging)
            if fmt == "lora":
                check_servable_adapter(staging)
        entry = registry.load(config.name, deep=True)
    state.wait_for_everyone()
    if state.is_main_process:  # RUN_DIR/final is a copy of what the entry now holds
        shutil.rmtree(config.run_dir() / "final", ignore_errors=True)
    return entry


def copy_adapter(final: Path, staging: Path) -> None:
    """Only the active ("default") adapter: DPO on a LoRA start also saved a frozen "ref" copy."""
    for name in ADAPTER_FILES:
        shutil.copy2(final / name, staging / name)


def copy_full(final: Path, staging: Path) -> None:
    for path in final.iterdir():
        if path.is_file() and (
            path.suffix == ".safetensors"
            or path.name in ("config.json", "generation_config.json", "model.safetensors.index.json")
        ):
            shutil.copy2(path, staging / path.name)
