"""RLOOConfig: the options of `bonserve train rloo` (training/rloo.py): the online-RL options
shared with GRPO (training/online_rl_config.py) plus RLOO's own."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.online_rl_config import OnlineRLConfig


@dataclass
class RLOOConfig(OnlineRLConfig):
    """`bonserve train rloo` options (the shared ones are documented on OnlineRLConfig)."""

    normalize_advantages: bool = field(
        default=False,
        metadata={"help": "Whiten the leave-one-out advantages over the batch (mean 0, std 1)."},
    )
