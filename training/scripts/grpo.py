"""GRPO (TRL's GRPOTrainer, online RL) into a registry entry; the library is training/grpo.py
and training/online_rl.py (shared with RLOO).

    bonserve train grpo --task arithmetic --name arith-grpo                   # gold verifier
    bonserve train grpo --task arithmetic --reward rm --reward-model arith-rm --name arith-grpo-rm
    bonserve train grpo --prompts prompts.jsonl --reward rm --reward-model arith-rm --name my-grpo
    python -m training.scripts.grpo --task arithmetic --name arith-grpo               # the same
    accelerate launch -m training.scripts.grpo --task arithmetic --name arith-grpo    # several GPUs
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from training import grpo, online_rl
from training.grpo_config import GRPOConfig
from training.scripts.cli import add_prompts_alias, describe, new_parser, run_main

HELP = describe(__doc__, grpo.__doc__, online_rl.__doc__)


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return add_prompts_alias(GRPOConfig, parser or new_parser("bonserve train grpo", HELP))


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(GRPOConfig, grpo.run, make_parser(), argv, args)


if __name__ == "__main__":
    raise SystemExit(main())
