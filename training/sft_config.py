"""SFTConfig: the options of `bonserve train sft` (training/sft.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.train_config import TrainConfig


@dataclass
class SFTConfig(TrainConfig):
    """`bonserve train sft` options (the shared ones are documented on TrainConfig)."""

    completion_only_loss: bool = field(
        default=True, metadata={"help": "With prompt/completion data, train on completion tokens only."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
