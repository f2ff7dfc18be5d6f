"""Supervised fine-tuning (TRL's SFTTrainer) into a registry entry; the library is training/sft.py.

bonserve train sft --data sft.jsonl --name arith-sft --max-steps 60
python -m training.scripts.sft --data sft.jsonl --name arith-sft              # the same
accelerate launch -m training.scripts.sft --data sft.jsonl --name arith-sft   # several GPUs
ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m training.scripts.sft ...   # 2 CPU processes
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from core.flags import add_flags
from training import sft
from training.scripts.cli import describe, new_parser, run_main
from training.sft_config import SFTConfig

HELP = describe(__doc__, sft.__doc__)


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return add_flags(parser or new_parser("bonserve train sft", HELP), SFTConfig)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(SFTConfig, sft.run, make_parser(), argv, args)


if __name__ == "__main__":
    raise SystemExit(main())
