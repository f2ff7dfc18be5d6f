"""What the trainers share, from the starting model to the registry entry:

- the start: `resolve_start` (the --base entry and the full checkpoint under it),
  `load_causal_lm`, `load_tokenizer`, `lora_config` (LoRA that vLLM can serve);
- the run directory: `prepare_run_dir` (refuses to mix runs; --resume / --overwrite);
- TRL's loop: `train` (resume, log the last step, --max-time-s), `final_metrics`, `to_dataset`,
  `save_trained` (RUN_DIR/final);
- the entry: `save_entry`, the one tail every trainer ends with (manifest, adapter or full
  weights, tokenizer, servability check).

The options themselves are training/train_config.py; the command lines, training/scripts/.
Nothing heavy is imported at module level: `bonserve --help` must stay fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.flags import ConfigError
from core.lora import ADAPTER_FILES, check_servable_adapter, full_weights_of
from core.registry import Entry, Registry
from training.train_config import TrainConfig

RUN_INFO = "bonserve_run.json"


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
    (possibly distributed) state, so asking before would see a single process. Without one
    (PPO's own loop), the first call sets it up the way TrainingArguments would: on CPU
    (no GPU, or ACCELERATE_USE_CPU) accelerate finds the other processes of a launch only
    when told it runs on CPU."""
    from accelerate import PartialState

    if args is not None:
        _ = args.device  # TrainingArguments._setup_devices
    elif not PartialState._shared_state:
        import torch

        use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        return PartialState(cpu=use_cpu or not torch.cuda.is_available())
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


def save_entry(
    config: TrainConfig,
    start: Start,
    *,
    kind: str,
    final_dir: Path,
    data_digest: str,
    metrics: dict[str, Any],
    tokenizer: Any,
    extra: dict[str, Any] | None = None,
    fmt: str | None = None,
    fill: Callable[[Path], None] | None = None,
) -> Entry | None:
    """Write the run's registry entry from the main process (None on the others): the tail
    every trainer ends with.

    The weights are the trained ones in `final_dir` (RUN_DIR/final): the adapter for a LoRA
    run (`copy_adapter`), the full checkpoint otherwise (`copy_full`), unless `fill(staging)`
    puts them in itself (the reward model merges its adapter: `fmt="full"`). The tokenizer is
    added here; a LoRA entry is refused unless vLLM could serve its adapter. The manifest
    records kind, format (default `config.format`), base, parent, data hash, every
    hyperparameter, the metrics and `extra`. Then the run directory's scratch copies (final/,
    merged-start/) are removed: the entry holds what they did.
    """
    from core.registry import Manifest

    fmt = fmt or config.format
    if fill is None:
        copy = copy_full if fmt == "full" else copy_adapter

        def fill(staging: Path) -> None:
            copy(final_dir, staging)

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
        if config.merge and fmt == "lora":
            from training.merge import merge_entry

            merged = merge_entry(registry, config.name, overwrite=config.overwrite)
            print(f"[{kind}] wrote merged entry {merged.name!r}: {merged.path}", flush=True)
    state.wait_for_everyone()
    if state.is_main_process:
        shutil.rmtree(final_dir, ignore_errors=True)
        shutil.rmtree(config.run_dir() / "merged-start", ignore_errors=True)
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
