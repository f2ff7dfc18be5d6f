"""RLOO (TRL's RLOOTrainer, online RL) into a registry entry; the library is training/rloo.py
and training/online_rl.py (shared with GRPO).

    bonserve train rloo --task arithmetic --name arith-rloo                   # gold verifier
    bonserve train rloo --task arithmetic --reward rm --reward-model arith-rm --name arith-rloo-rm
    python -m training.scripts.rloo --task arithmetic --name arith-rloo               # the same
    accelerate launch -m training.scripts.rloo --task arithmetic --name arith-rloo    # several GPUs
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from training import online_rl, rloo
from training.rloo_config import RLOOConfig
from training.scripts.cli import add_prompts_alias, describe, new_parser, run_main

HELP = describe(__doc__, rloo.__doc__, online_rl.__doc__)


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return add_prompts_alias(RLOOConfig, parser or new_parser("bonserve train rloo", HELP))


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(RLOOConfig, rloo.run, make_parser(), argv, args)


if __name__ == "__main__":
    raise SystemExit(main())
