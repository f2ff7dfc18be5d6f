"""BoNDistillConfig: the options of `bonserve train distill` (training/distill.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.flags import ConfigError
from training.sft_config import SFTConfig


@dataclass
class BoNDistillConfig(SFTConfig):
    """`bonserve train distill` options. `--data` is the samples file `bonserve data prefs`
    writes (OUT.samples.jsonl: each prompt's k replies of the policy); the shared training
    options are documented on TrainConfig."""

    reward_model: str | None = field(
        default=None,
        metadata={"help": "Reward-model entry that picks each prompt's Best-of-N winner (required)."},
    )
    n: int = field(
        default=8,
        metadata={"help": "Candidates per prompt: the first N samples of each row (the BoN-N to distil)."},
    )
    rm_backend: str = field(
        default="vllm", metadata={"help": "Score with vLLM's pooling runner or with transformers."}
    )
    kv_cache_gib: float = field(default=1.0, metadata={"help": "KV cache of the scoring engine."})
    allow_off_policy: bool = field(
        default=False,
        metadata={
            "help": "Train --base on samples another policy drew (refused by default: distillation "
            "teaches a policy its own Best-of-N choices)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.reward_model:
            raise ConfigError("reward_model: give the reward-model entry that picks the winners")
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 2:
            raise ConfigError(f"n={self.n!r}: Best-of-N needs at least 2 candidates")
        if self.rm_backend not in ("vllm", "transformers"):
            raise ConfigError(f"rm_backend={self.rm_backend!r}: use 'vllm' or 'transformers'")
