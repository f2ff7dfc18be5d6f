"""What every entry point in training/scripts/ shares: the parser, and parse -> config -> run
with user errors (bad options, data, registry entries) as one line on stderr and exit code 1."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from core.flags import ConfigError, add_flags, config_from_args
from core.registry import RegistryError
from training.data import DataError


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser a script builds when run on its own (`bonserve` passes its subparser)."""
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def describe(script_doc: str | None, *library_docs: str | None) -> str:
    """`--help`'s description: how to run it (the script's docstring), then what it does (the
    library modules' docstrings)."""
    return "\n".join(doc for doc in (script_doc, *library_docs) if doc)


def print_entry(entry: Any) -> None:
    """A trainer's report: the entry written (None on non-main processes) and its metrics."""
    if entry is not None:
        print(f"[{entry.manifest.kind}] wrote registry entry {entry.name!r}: {entry.path}")
        print(json.dumps(entry.manifest.metrics, indent=2, sort_keys=True))


def run_main(
    cls: type,
    run: Callable[[Any], Any],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    args: argparse.Namespace | None = None,
    report: Callable[[Any], None] = print_entry,
) -> int:
    """Parse (unless `args` are given), build the `cls` config, `run` it and `report` the
    result; user errors print one line and return 1."""
    if args is None:
        args = parser.parse_args(argv)
    try:
        result = run(config_from_args(cls, args))
    except (ConfigError, DataError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report(result)
    return 0


def add_prompts_alias(cls: type, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The online-RL config's flags plus `--prompts`, an alias of `--data` (the name `data
    prefs` uses)."""
    add_flags(parser, cls)
    parser.add_argument(
        "--prompts",
        dest="data",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="Same as --data: the prompt file.",
    )
    return parser
