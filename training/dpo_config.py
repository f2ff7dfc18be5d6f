"""DPOConfig: the options of `bonserve train dpo` (training/dpo.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.flags import ConfigError
from training.train_config import TrainConfig

LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "robust",
    "bco_pair",
    "sppo_hard",
    "apo_zero",
    "apo_down",
    "sigmoid_norm",
)


@dataclass
class DPOConfig(TrainConfig):
    """`bonserve train dpo` options (the shared ones are documented on TrainConfig)."""

    beta: float = field(
        default=0.1,
        metadata={
            "help": "Strength of the KL pull toward the reference; the implicit reward is "
            "beta*log(pi/pi_ref)."
        },
    )
    loss_type: str = field(
        default="sigmoid",
        metadata={"help": f"TRL DPO loss: one of {', '.join(LOSS_TYPES)} (sigmoid = the DPO paper's)."},
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "Assumed probability that a pair's labels are flipped (robust/cDPO); 0 = plain DPO."
        },
    )
    rpo_alpha: float = field(
        default=0.0,
        metadata={
            "help": "Weight of an NLL term on the chosen replies added to the preference loss (RPO, "
            "Pang et al. 2024: TRL's loss_type [loss, 'sft'] with weights [1, alpha]); 0 = off."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            raise ConfigError(f"beta={self.beta!r}: must be > 0")
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type={self.loss_type!r}: use one of {LOSS_TYPES}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing={self.label_smoothing!r}: must lie in [0, 0.5)")
        if not self.rpo_alpha >= 0:
            raise ConfigError(f"rpo_alpha={self.rpo_alpha!r}: must be >= 0")

    def dpo_kwargs(self) -> dict[str, object]:
        """The DPO-specific keyword arguments of trl.DPOConfig."""
        kwargs: dict[str, object] = {
            "beta": self.beta,
            "loss_type": [self.loss_type],
            "label_smoothing": self.label_smoothing,
        }
        if self.rpo_alpha > 0:
            kwargs |= {"loss_type": [self.loss_type, "sft"], "loss_weights": [1.0, self.rpo_alpha]}
        return kwargs
