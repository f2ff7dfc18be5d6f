"""Evaluate a policy on a task's held-out prompts (gold accuracy, pass@n, BoN-n, reward-model
pairwise accuracy, KL to its base); the library is training/eval.py.

    bonserve eval --model smollm2-135m-instruct --task arithmetic                 # greedy only
    bonserve eval --model arith-dpo --task arithmetic --n 8 --reward-model arith-rm \\
        --out eval-dpo.json                                                       # + BoN-8
    python -m training.scripts.eval --model arith-dpo --task arithmetic           # the same
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from core.flags import add_flags
from training import eval as evaluate
from training.eval_config import EvalConfig
from training.scripts.cli import describe, new_parser, run_main

HELP = describe(__doc__, evaluate.__doc__)


def print_table(result: dict[str, Any]) -> None:
    print(evaluate.format_table(result))


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return add_flags(parser or new_parser("bonserve eval", HELP), EvalConfig)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(EvalConfig, evaluate.run, make_parser(), argv, args, report=print_table)


if __name__ == "__main__":
    raise SystemExit(main())
