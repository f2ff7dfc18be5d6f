"""RLHF-PPO (in-house: policy, value head, reference, per-token KL) into a registry entry; the
library is training/ppo.py (trainer), ppo_rollouts.py, ppo_math.py, ppo_config.py.

    bonserve train ppo --name arith-ppo --task arithmetic --reward gold          # gold verifier
    bonserve train ppo --name arith-ppo-rm --task arithmetic --reward rm --reward-model arith-rm
    bonserve train ppo --name chat-ppo --data prompts.jsonl --reward rm --reward-model my-rm
    python -m training.scripts.ppo --name arith-ppo --task arithmetic            # the same
    accelerate launch -m training.scripts.ppo --name arith-ppo --task arithmetic  # data-parallel
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m training.scripts.ppo ...  # 2 CPU processes
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from core.flags import add_flags
from training import ppo
from training.ppo_config import PPOConfig
from training.scripts.cli import describe, new_parser, run_main

HELP = describe(__doc__, ppo.__doc__)


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return add_flags(parser or new_parser("bonserve train ppo", HELP), PPOConfig)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(PPOConfig, ppo.run, make_parser(), argv, args)


if __name__ == "__main__":
    raise SystemExit(main())
