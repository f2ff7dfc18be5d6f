"""Reward model (TRL's RewardTrainer) into a merged, full registry entry; the library is
training/rm.py.

    bonserve data prefs --policy smollm2-135m-instruct --task arithmetic --n-prompts 600 -k 8 \\
        --out prefs.jsonl
    bonserve train rm --data prefs.jsonl --name arith-rm --max-steps 60
    python -m training.scripts.rm --data prefs.jsonl --name arith-rm              # the same
    accelerate launch -m training.scripts.rm --data prefs.jsonl --name arith-rm   # several GPUs
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m training.scripts.rm ...   # 2 CPU processes
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from core.flags import add_flags
from training import rm
from training.rm_config import RMConfig
from training.scripts.cli import describe, new_parser, run_main

HELP = describe(__doc__, rm.__doc__)


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return add_flags(parser or new_parser("bonserve train rm", HELP), RMConfig)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(RMConfig, rm.run, make_parser(), argv, args)


if __name__ == "__main__":
    raise SystemExit(main())
