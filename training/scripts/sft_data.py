"""SFT rows from preference pairs: each prompt's chosen (best-judged) reply, i.e.
rejection-sampling fine-tuning data; the library is training/sft_data.py.

    bonserve data prefs --policy smollm2-135m-instruct --task arithmetic -k 8 --out prefs.jsonl
    bonserve data sft --from-prefs prefs.jsonl --min-score 1 --out sft.jsonl
    bonserve train sft --data sft.jsonl --name arith-sft
    python -m training.scripts.sft_data --from-prefs prefs.jsonl --out sft.jsonl     # the same
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from core.flags import add_flags
from training import sft_data
from training.scripts.cli import describe, new_parser, run_main
from training.sft_data_config import SFTDataConfig

HELP = describe(__doc__, sft_data.__doc__)


def print_stats(stats: dict[str, Any]) -> None:
    print(json.dumps(stats, indent=2))


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return add_flags(parser or new_parser("bonserve data sft", HELP), SFTDataConfig)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(SFTDataConfig, sft_data.run, make_parser(), argv, args, report=print_stats)


if __name__ == "__main__":
    raise SystemExit(main())
