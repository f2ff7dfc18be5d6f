"""Generative verifier (SFT on worked checks) into a registry entry; the library is training/verifier.py.

bonserve train verifier --full --data rows.jsonl --name verifier-arith --for-policy arith-ppo-merged
python -m training.scripts.verifier --full --data rows.jsonl --name verifier-arith   # the same
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from core.flags import add_flags
from training import verifier
from training.scripts.cli import describe, new_parser, run_main
from training.verifier_config import VerifierConfig

HELP = describe(__doc__, verifier.__doc__)


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return add_flags(parser or new_parser("bonserve train verifier", HELP), VerifierConfig)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    return run_main(VerifierConfig, verifier.run, make_parser(), argv, args)


if __name__ == "__main__":
    raise SystemExit(main())
