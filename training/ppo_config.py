"""PPOConfig: the options of `bonserve train ppo` (training/ppo.py, the in-house RLHF-PPO)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.flags import ConfigError
from training.rm_refresh_config import RewardRefreshConfig
from training.train_config import TrainConfig

REWARDS = ("gold", "rm")
BACKENDS = ("auto", "vllm", "hf")
REFRESH_SOURCES = ("samples", "rollouts")
REFRESH_PAIRS = ("prompt", "batch")


@dataclass(kw_only=True)
class PPOConfig(TrainConfig, RewardRefreshConfig):
    """`bonserve train ppo` options (the shared ones are documented on TrainConfig)."""

    data: str | None = field(
        default=None,
        metadata={
            "help": "Prompts file (JSONL/Parquet rows with `prompt`: a string or messages) instead of "
            "--task; needs --reward rm."
        },
    )
    task: str | None = field(
        default=None,
        metadata={"help": "Built-in task giving prompts and the gold verifier (arithmetic unless --data)."},
    )
    split: str = field(default="train", metadata={"help": "Task split the prompts come from."})
    n_prompts: int | None = field(default=None, metadata={"help": "Use the first N prompts only."})
    reward: str = field(
        default="gold",
        metadata={"help": "What PPO maximises: 'gold' (the task's verifier) or 'rm' (--reward-model)."},
    )
    reward_model: str | None = field(
        default=None,
        metadata={
            "help": "Registry reward model (kind rm); scored each step, logged beside gold if a task has one."
        },
    )
    rm_refresh_prompts: int = field(default=32, metadata={"help": "Prompts sampled per refresh."})
    rm_refresh_k: int = field(default=4, metadata={"help": "Samples per prompt at a refresh."})
    rm_refresh_source: str = field(
        default="samples",
        metadata={
            "help": "Where a refresh's comparisons come from: 'samples' (--rm-refresh-k fresh samples of "
            "--rm-refresh-prompts prompts, drawn at the refresh) or 'rollouts' (PPO's own rollouts since the "
            "last refresh, grouped by --rollouts-per-prompt >= 2 unless --rm-refresh-pairs batch: no extra "
            "sampling)."
        },
    )
    rm_refresh_pairs: str = field(
        default="prompt",
        metadata={
            "help": "Which rollouts a comparison pairs: 'prompt' (two replies to one prompt) or 'batch' "
            "(any better and worse rollout of one iteration, across prompts, as PPO compares scores; "
            "needs --rm-refresh-source rollouts)."
        },
    )
    rollouts_per_prompt: int = field(
        default=1,
        metadata={
            "help": "Rollouts sampled per prompt in an iteration (--batch-size / this many distinct "
            "prompts); >= 2 makes every iteration's rollouts comparable within a prompt."
        },
    )
    rollout_backend: str = field(
        default="auto",
        metadata={
            "help": "'vllm' (LoRA only), 'hf' (transformers generate), 'auto' (vllm: LoRA on GPU; else hf)."
        },
    )
    batch_size: int = field(
        default=32,
        metadata={"help": "Rollouts per PPO iteration (distinct prompts x --rollouts-per-prompt)."},
    )
    mini_batch_size: int = field(
        default=8,
        metadata={"help": "Rollouts per optimizer step; --gradient-accumulation-steps splits it further."},
    )
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the rollouts."})
    max_new_tokens: int = field(default=48, metadata={"help": "Longest response."})
    kl_coef: float = field(
        default=0.05, metadata={"help": "Initial coefficient of the per-token KL penalty."}
    )
    kl_estimator: str = field(
        default="k1",
        metadata={
            "help": "KL estimator in the reward: k1 (log ratio, as in the papers) or k3 (non-negative)."
        },
    )
    target_kl: float | None = field(
        default=None,
        metadata={
            "help": "Adaptive KL: steer the per-sequence KL toward this value (default: fixed kl_coef)."
        },
    )
    kl_horizon: int = field(default=10000, metadata={"help": "Adaptive KL horizon, in episodes."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip range."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten per-token rewards (mean kept)."})
    normalize_scores: bool = field(
        default=False,
        metadata={"help": "Fix a gain and bias on the first batch's scores so they have mean 0, std 1."},
    )
    missing_eos_penalty: float = field(
        default=1.0,
        metadata={"help": "Subtracted from the score of a response cut off before its end token (0 = off)."},
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    forward_batch_size: int = field(default=16, metadata={"help": "Rows per no-grad forward pass."})
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "LoRA dropout; 0 so that log-probs at rollout and update time agree (PPO detail)."},
    )
    logging_steps: int = field(default=1, metadata={"help": "Print metrics every N iterations."})
    save_steps: int = field(default=10, metadata={"help": "Write a resumable checkpoint every N iterations."})
    enforce_eager: bool = field(default=False, metadata={"help": "Skip torch.compile in the rollout engine."})
    kv_cache_gib: float = field(default=1.0, metadata={"help": "KV cache of the rollout engine."})

    def __post_init__(self) -> None:
        if self.data is None and self.task is None:
            self.task = "arithmetic"
        if self.data is not None and self.task is not None:
            raise ConfigError("give prompts by --task or --data, not both")
        super().__post_init__()
        if self.reward not in REWARDS:
            raise ConfigError(f"reward={self.reward!r}: use one of {REWARDS}")
        if self.reward == "rm" and not self.reward_model:
            raise ConfigError("reward='rm' needs --reward-model NAME (a registry entry of kind rm)")
        if self.reward == "gold" and not self.task:
            raise ConfigError(
                "reward='gold' needs a --task with a gold verifier; with --data use --reward rm"
            )
        self.check_refresh(learned_reward=self.reward == "rm", gold_labels=bool(self.task))
        if self.rm_refresh_every:
            if self.rm_refresh_prompts < 1:
                raise ConfigError(f"rm_refresh_prompts={self.rm_refresh_prompts!r}: must be >= 1")
            if self.rm_refresh_k < 2:
                raise ConfigError(f"rm_refresh_k={self.rm_refresh_k!r}: a pair needs 2 samples of a prompt")
            if self.rm_refresh_source not in REFRESH_SOURCES:
                raise ConfigError(
                    f"rm_refresh_source={self.rm_refresh_source!r}: use one of {REFRESH_SOURCES}"
                )
            if self.rm_refresh_pairs not in REFRESH_PAIRS:
                raise ConfigError(f"rm_refresh_pairs={self.rm_refresh_pairs!r}: use one of {REFRESH_PAIRS}")
            if self.rm_refresh_pairs == "batch" and self.rm_refresh_source != "rollouts":
                raise ConfigError(
                    "rm_refresh_pairs='batch' pairs PPO's rollouts: needs --rm-refresh-source rollouts"
                )
            if (
                self.rm_refresh_source == "rollouts"
                and self.rm_refresh_pairs == "prompt"
                and self.rollouts_per_prompt < 2
            ):
                raise ConfigError(
                    "rm_refresh_source='rollouts' needs rollouts_per_prompt >= 2: a pair needs two "
                    "rollouts of one prompt (or --rm-refresh-pairs batch; with a verifier, which learns "
                    "from each rollout alone, pass batch)"
                )
        elif self.rm_refresh_pairs != "prompt":
            raise ConfigError("rm_refresh_pairs needs --rm-refresh-every (it shapes the refreshes)")
        if self.rollout_backend not in BACKENDS:
            raise ConfigError(f"rollout_backend={self.rollout_backend!r}: use one of {BACKENDS}")
        if self.rollout_backend == "vllm" and self.full:
            raise ConfigError(
                "rollout_backend='vllm' with --full: vLLM would have to reload the full "
                "weights every iteration; use --rollout-backend hf"
            )
        if self.kl_estimator not in ("k1", "k3"):
            raise ConfigError(f"kl_estimator={self.kl_estimator!r}: use k1 or k3")
        for key in (
            "mini_batch_size",
            "num_ppo_epochs",
            "max_new_tokens",
            "forward_batch_size",
            "kl_horizon",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key}={value!r}: must be an integer >= 1")
        if not isinstance(self.rollouts_per_prompt, int) or self.rollouts_per_prompt < 1:
            raise ConfigError(f"rollouts_per_prompt={self.rollouts_per_prompt!r}: must be an integer >= 1")
        if self.batch_size % self.rollouts_per_prompt:
            raise ConfigError(
                f"batch_size={self.batch_size} is not a multiple of "
                f"rollouts_per_prompt={self.rollouts_per_prompt}"
            )
        if self.batch_size % self.mini_batch_size:
            raise ConfigError(
                f"batch_size={self.batch_size} is not a multiple of mini_batch_size={self.mini_batch_size}"
            )
        if self.mini_batch_size % self.gradient_accumulation_steps:
            raise ConfigError(
                f"mini_batch_size={self.mini_batch_size} is not a multiple of "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps}"
            )
        checks = {
            "temperature": self.temperature > 0,
            "kl_coef": self.kl_coef >= 0,
            "gamma": 0 < self.gamma <= 1,
            "lam": 0 <= self.lam <= 1,
            "cliprange": self.cliprange > 0,
            "cliprange_value": self.cliprange_value > 0,
            "vf_coef": self.vf_coef >= 0,
            "missing_eos_penalty": self.missing_eos_penalty >= 0,
            "max_grad_norm": self.max_grad_norm > 0,
            "kv_cache_gib": self.kv_cache_gib > 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r} is out of range (see --help)")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ConfigError(f"target_kl={self.target_kl!r}: must be > 0")
        if self.bf16:
            raise ConfigError("bf16=True: the PPO loop runs in float32 (log-prob ratios need the precision)")

    @property
    def backend(self) -> str:
        """'auto' picks vLLM only where it is the faster one: for LoRA on a GPU. On CPU, vLLM's
        LoRA kernels decode at 0.55x HF generate (docs/benchmarks/rollout_throughput.md)."""
        if self.rollout_backend != "auto":
            return self.rollout_backend
        import torch

        return "vllm" if torch.cuda.is_available() and not self.full else "hf"
