"""Best-of-N distillation (SFT on the reward model's Best-of-N picks of the policy's own
samples) into a registry entry; the library is training/distill.py.

    bonserve data prefs --policy smollm2-135m-instruct --task arithmetic --n-prompts 1000 -k 8 \\
        --temperature 0.4 --pairs all --out prefs.jsonl           # also writes prefs.jsonl.samples.jsonl
    bonserve train distill --data prefs.jsonl.samples.jsonl --reward-model rm-base --n 8 \\
        --name base-bon8-distilled --merge
    python -m training.scripts.distill --data prefs.jsonl.samples.jsonl ...        # the same
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from core.flags import add_flags
from training import distill
from training.distill_config import BoNDistillConfig
from training.scripts.cli import describe, new_parser, print_entry, run_main

HELP = describe(__doc__, distill.__doc__)


def report(entry: Any) -> None:
    print_entry(entry)
    if entry is not None:
        print(json.dumps(entry.manifest.extra.get("distilled"), indent=2, sort_keys=True))


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return add_flags(parser or new_parser("bonserve train distill", HELP), BoNDistillConfig)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(BoNDistillConfig, distill.run, make_parser(), argv, args, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
