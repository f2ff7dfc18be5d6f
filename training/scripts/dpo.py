"""Direct Preference Optimization (TRL's DPOTrainer) into a registry entry; the library is
training/dpo.py.

    bonserve data prefs --policy smollm2-135m-instruct --task arithmetic --n-prompts 600 -k 8 \\
        --out prefs.jsonl
    bonserve train dpo --data prefs.jsonl --name arith-dpo --max-steps 60
    python -m training.scripts.dpo --data prefs.jsonl --name arith-dpo              # the same
    accelerate launch -m training.scripts.dpo --data prefs.jsonl --name arith-dpo   # several GPUs
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m training.scripts.dpo ...   # 2 CPU processes
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from core.flags import add_flags
from training import dpo
from training.dpo_config import DPOConfig
from training.scripts.cli import describe, new_parser, run_main

HELP = describe(__doc__, dpo.__doc__)


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return add_flags(parser or new_parser("bonserve train dpo", HELP), DPOConfig)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(DPOConfig, dpo.run, make_parser(), argv, args)


if __name__ == "__main__":
    raise SystemExit(main())
