"""VerifierConfig: the options of `bonserve train verifier` (training/verifier.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.flags import ConfigError
from training.sft_config import SFTConfig


@dataclass
class VerifierConfig(SFTConfig):
    """`bonserve train verifier` options. `--data` holds verifier rows (benchmarks/verifier_data.py
    writes them); the shared training options are documented on TrainConfig."""

    task: str = field(
        default="arithmetic",
        metadata={"help": "Task whose worked check the rows teach (recorded in the manifest)."},
    )
    for_policy: str | None = field(
        default=None,
        metadata={
            "help": "The policy whose replies the rows review, recorded as manifest extra.trained_for "
            "(what the server pairs a reranker with a policy by)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.full:
            raise ConfigError(
                "a verifier is trained and served as full weights: pass --full (a LoRA verifier "
                "would need a second adapter slot in the server's generate engine)"
            )
        from training.tasks import get_task

        try:
            get_task(self.task)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
