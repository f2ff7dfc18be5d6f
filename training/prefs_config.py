"""PrefsConfig: the options of `bonserve data prefs` (training/prefs.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.flags import ConfigError

JUDGES = ("gold", "rm")
PAIR_RULES = ("best-worst", "all")
RM_BACKENDS = ("vllm", "transformers")


@dataclass
class PrefsConfig:
    """`bonserve data prefs` options."""

    policy: str = field(metadata={"help": "Registry entry to sample from (full or LoRA)."})
    out: str = field(metadata={"help": "JSONL file to write the pairs to."})
    task: str | None = field(
        default=None,
        metadata={
            "help": "Built-in task giving the prompts and the gold verifier (arithmetic unless --prompts)."
        },
    )
    prompts: str | None = field(
        default=None,
        metadata={
            "help": "JSONL of prompts instead of a task: rows with `prompt` (string or messages); "
            "needs --judge rm."
        },
    )
    split: str = field(default="train", metadata={"help": "Task split: train or heldout."})
    n_prompts: int | None = field(default=None, metadata={"help": "Use the first N prompts (default: all)."})
    k: int = field(default=8, metadata={"help": "Samples per prompt."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    max_tokens: int = field(default=64, metadata={"help": "Longest completion."})
    judge: str = field(
        default="gold",
        metadata={"help": "Rank with the task's gold verifier ('gold') or a reward model ('rm')."},
    )
    reward_model: str | None = field(
        default=None,
        metadata={"help": "Reward model entry: the judge with --judge rm; otherwise scored for agreement."},
    )
    pairs: str = field(
        default="best-worst",
        metadata={
            "help": "Pair rule per prompt: 'best-worst' (one pair) or 'all' (every (better, worse) "
            "combination of distinct non-empty replies: what a reward model for Best-of-N learns from)."
        },
    )
    max_pairs_per_prompt: int | None = field(
        default=None,
        metadata={"help": "With --pairs all: keep at most this many pairs per prompt (seeded choice)."},
    )
    rm_backend: str = field(
        default="vllm", metadata={"help": "Score with vLLM's pooling runner or with transformers."}
    )
    registry: str | None = field(default=None, metadata={"help": "Registry directory."})
    seed: int = field(default=0, metadata={"help": "Engine seed."})
    enforce_eager: bool = field(
        default=False, metadata={"help": "Skip torch.compile in the engine (starts faster, decodes slower)."}
    )
    kv_cache_gib: float = field(default=1.0, metadata={"help": "KV cache per engine."})

    def __post_init__(self) -> None:
        if self.judge not in JUDGES:
            raise ConfigError(f"judge={self.judge!r}: use one of {JUDGES}")
        if self.rm_backend not in RM_BACKENDS:
            raise ConfigError(f"rm_backend={self.rm_backend!r}: use one of {RM_BACKENDS}")
        if self.judge == "rm" and not self.reward_model:
            raise ConfigError("judge='rm' needs --reward-model")
        if self.prompts:
            if self.task:
                raise ConfigError(f"prompts={self.prompts!r} and task={self.task!r}: give one prompt source")
            if self.judge == "gold":
                raise ConfigError(f"prompts={self.prompts!r} has no gold verifier: use --judge rm")
        elif not self.task:
            self.task = "arithmetic"
        if self.task:
            from training.tasks import get_task

            try:
                get_task(self.task)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.split not in ("train", "heldout"):
            raise ConfigError(f"split={self.split!r}: use 'train' or 'heldout'")
        if self.pairs not in PAIR_RULES:
            raise ConfigError(f"pairs={self.pairs!r}: use one of {PAIR_RULES}")
        if self.max_pairs_per_prompt is not None and self.max_pairs_per_prompt < 1:
            raise ConfigError(f"max_pairs_per_prompt={self.max_pairs_per_prompt!r}: must be >= 1")
        if self.k < 2:
            raise ConfigError(f"k={self.k!r}: a pair needs at least 2 samples per prompt")
        if self.n_prompts is not None and self.n_prompts < 1:
            raise ConfigError(f"n_prompts={self.n_prompts!r}: must be >= 1")
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature!r}: sampling k distinct completions needs > 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p!r}: must lie in (0, 1]")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens={self.max_tokens!r}: must be >= 1")
        if self.kv_cache_gib <= 0:
            raise ConfigError(f"kv_cache_gib={self.kv_cache_gib!r}: must be > 0")
