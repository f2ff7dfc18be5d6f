"""SFTDataConfig: the options of `bonserve data sft` (training/sft_data.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SFTDataConfig:
    """`bonserve data sft` options."""

    from_prefs: str = field(metadata={"help": "Preference data (TRL format) whose `chosen` replies to keep."})
    out: str = field(metadata={"help": "JSONL file to write the SFT rows to."})
    min_score: float | None = field(
        default=None,
        metadata={"help": "Keep rows whose `chosen_score` is at least this (default: keep every row)."},
    )
