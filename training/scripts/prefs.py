"""Preference pairs from a policy's own samples (sample k, judge, keep best vs worst) into a
JSONL file; the library is training/prefs.py.

    bonserve data prefs --policy smollm2-135m-instruct --task arithmetic --n-prompts 600 -k 8 \\
        --temperature 0.8 --out prefs.jsonl                                   # gold verifier
    bonserve data prefs --policy arith-dpo --task arithmetic --judge rm --reward-model arith-rm \\
        --out dpo-prefs.jsonl          # reward-model judge; gold agreement is reported too
    python -m training.scripts.prefs --policy smollm2-135m-instruct --out prefs.jsonl   # the same
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from core.flags import add_flags
from training import prefs
from training.prefs_config import PrefsConfig
from training.scripts.cli import describe, new_parser, run_main

HELP = describe(__doc__, prefs.__doc__)


def print_stats(stats: dict[str, Any]) -> None:
    print(
        f"[data prefs] {stats['policy']} on {stats['task'] or 'prompts file'} "
        f"({stats['prompts']} prompts x k={stats['k']}, T={stats['temperature']}, judge {stats['judge']})"
    )
    print(
        f"  pairs kept        {stats['pairs']} "
        f"({stats['pair_rule']}, from {stats['prompts_with_pairs']} prompts)"
    )
    print(f"  ties dropped      {stats['ties_dropped']}")
    print(f"  empty completions {stats['empty_completions']}")
    if "gold_mean_reward" in stats:
        print(f"  gold per-sample   {stats['gold_mean_reward']:.3f}   pass@k {stats['gold_pass_at_k']:.3f}")
    if "judge_agreement" in stats:
        a = stats["judge_agreement"]
        other = "reward model" if stats["judge"] == "gold" else "gold verifier"
        value = "n/a" if a["agreement"] is None else f"{a['agreement']:.3f}"
        print(f"  {other} agrees on {value} of {a['pairs'] - a['ties']} decided pairs ({a['ties']} ties)")
    print(f"  wrote {stats['out']} and {stats['samples_out']}")


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or new_parser("bonserve data prefs", HELP)
    add_flags(parser, PrefsConfig)
    parser.add_argument("-k", dest="k", type=int, default=argparse.SUPPRESS, help="Same as --k.")
    return parser


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(PrefsConfig, prefs.run, make_parser(), argv, args, report=print_stats)


if __name__ == "__main__":
    raise SystemExit(main())
