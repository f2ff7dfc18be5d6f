"""RMConfig: the options of `bonserve train rm` (training/rm.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.flags import ConfigError
from training.train_config import TrainConfig


@dataclass
class RMConfig(TrainConfig):
    """`bonserve train rm` options (the shared ones are documented on TrainConfig)."""

    eval_data: str | None = field(
        default=None,
        metadata={"help": "Held-out preference pairs; their pairwise accuracy is measured after training."},
    )
    for_policy: str | None = field(
        default=None,
        metadata={
            "help": "The policy this model will rerank, recorded as manifest extra.trained_for (the "
            "server pairs them by it). Default: the one `policy` named by every training pair."
        },
    )
    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={"help": "Weight of the auxiliary loss pulling mean rewards to zero (TRL's option; off)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise ConfigError(f"center_rewards_coefficient={self.center_rewards_coefficient!r}: must be >= 0")
