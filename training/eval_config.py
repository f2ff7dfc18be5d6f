"""EvalConfig: the options of `bonserve eval` (training/eval.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.flags import ConfigError


@dataclass
class EvalConfig:
    """`bonserve eval` options."""

    model: str = field(metadata={"help": "Policy to evaluate: a registry entry (full or LoRA)."})
    task: str = field(default="arithmetic", metadata={"help": "Built-in task."})
    split: str = field(default="heldout", metadata={"help": "Task split (held-out by default)."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate on the first N prompts only."})
    n: int | None = field(default=None, metadata={"help": "Samples per prompt for pass@n / BoN-n."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature of the n samples."})
    max_tokens: int = field(default=64, metadata={"help": "Longest completion."})
    reward_model: str | None = field(default=None, metadata={"help": "Reward model entry for BoN-n."})
    pairs_from: str | None = field(
        default=None,
        metadata={"help": "Policy whose samples give the reward model's held-out pairs (default: --model)."},
    )
    pairs_k: int = field(
        default=8,
        metadata={"help": "Samples per prompt for those pairs when they cannot reuse the --n samples."},
    )
    rm_backend: str = field(default="vllm", metadata={"help": "Score with 'vllm' or 'transformers'."})
    kl: bool = field(default=True, metadata={"help": "Estimate KL(policy || base) on greedy completions."})
    out: str | None = field(
        default=None,
        metadata={
            "help": "Write the results as JSON here (and every prompt's outcomes beside it, .prompts.jsonl)."
        },
    )
    record: bool = field(
        default=False,
        metadata={
            "help": "Store the reward model's measured effect on this policy (gap captured, pairwise "
            "accuracy) in the registry, where the server's pairing gate reads it."
        },
    )
    registry: str | None = field(default=None, metadata={"help": "Registry directory."})
    seed: int = field(default=0, metadata={"help": "Engine seed."})
    enforce_eager: bool = field(default=False, metadata={"help": "Skip torch.compile in the engine."})
    kv_cache_gib: float = field(default=1.0, metadata={"help": "KV cache per engine."})

    def __post_init__(self) -> None:
        from training.tasks import get_task

        try:
            task = get_task(self.task)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.split not in task.sizes:
            raise ConfigError(f"split={self.split!r}: use one of {sorted(task.sizes)}")
        if self.limit is not None and not 1 <= self.limit <= task.sizes[self.split]:
            raise ConfigError(f"limit={self.limit!r}: must lie in 1..{task.sizes[self.split]}")
        if self.n is not None and self.n < 1:
            raise ConfigError(f"n={self.n!r}: must be >= 1")
        if self.pairs_k < 2:
            raise ConfigError(f"pairs_k={self.pairs_k!r}: a pair needs at least 2 samples")
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature!r}: sampling needs > 0 (greedy is always run)")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens={self.max_tokens!r}: must be >= 1")
        if self.rm_backend not in ("vllm", "transformers"):
            raise ConfigError(f"rm_backend={self.rm_backend!r}: use 'vllm' or 'transformers'")
        if self.record and not (self.reward_model and self.n and self.n >= 2):
            raise ConfigError("record needs --reward-model and --n >= 2")
        if self.pairs_from and not self.reward_model:
            raise ConfigError(f"pairs_from={self.pairs_from!r} needs --reward-model")
