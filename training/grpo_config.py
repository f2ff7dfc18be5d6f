"""GRPOConfig: the options of `bonserve train grpo` (training/grpo.py); all of them are the
online-RL options shared with RLOO (training/online_rl_config.py)."""

from __future__ import annotations

from dataclasses import dataclass

from training.online_rl_config import OnlineRLConfig


@dataclass
class GRPOConfig(OnlineRLConfig):
    """`bonserve train grpo` options."""
