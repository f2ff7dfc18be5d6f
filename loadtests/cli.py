"""`bonserve loadtest run | compare`: latency, throughput, goodput, quality and cost of Best-of-N
and tuned policies, measured against a running server with the official `openai` client.

One configuration (prints the table; --out also writes report.json/report.md/plots):

    bonserve loadtest run --model smollm2-135m-instruct --best-of 4 --temperature 0.8 \\
        --task arithmetic --num-requests 100 --concurrency 4 --goodput ttft:2000 e2el:4000

Comparison, same prompts and arrival process (same seed) in every cell, one server:

    bonserve serve --reward-model arith-rm --max-loras 2 --accelerator-price-per-hour 2.5
    bonserve loadtest compare --models smollm2-135m-instruct,arith-dpo --best-of 1,2,4,8 \\
        --temperatures 0.8 --task arithmetic --num-requests 300 --load-models --out report/
    bonserve loadtest compare --matrix matrix.yaml --out report/

matrix.yaml: `models`/`best_of`/`temperatures` give the full product, `cells` adds single
rows, and any other key sets a `run` option by its name (underscored); flags override it:

    models: [smollm2-135m-instruct]
    best_of: [1, 4, 8]
    temperatures: [0.8]
    cells:                      # e.g. the tuned policies greedy, without reranking
      - {model: arith-dpo, best_of: 1, temperature: 0.0}
      - {model: arith-ppo, best_of: 1, temperature: 0.0}
    num_requests: 300
    concurrency: 4
    goodput: {ttft: 2000, e2el: 4000}

Arrivals: `--request-rate R` is an open loop with gamma inter-arrivals (`--burstiness 1` =
Poisson), capped at `--concurrency` in flight (0 = no cap); the default infinite rate with
`--concurrency C` is a closed loop of C clients. `--num-requests` and `--duration-s` bound
the measured phase; `--warmup-requests` go first, one at a time, and are not counted.

Prompts: `--task NAME` (held-out split by default; quality = gold verifier), `--prompts-file
x.jsonl` ({"messages": [...]} or {"prompt": "..."} per line) or `--synthetic-input-len N`;
without a task, quality is the server's reward-model score (POST /v1/rewards) if it has one.

What comes out, per row (report.md explains each definition): TTFT, TPOT, ITL and E2EL
(mean/p50/p90/p99, ms) with TTFT counted to the first *delivered* token (a BoN answer is
delivered after selection); request and delivered-token throughput; goodput under the SLOs;
errors; delivered vs decoded tokens; quality with a 95% interval; for BoN rows the oracle
ceiling (pass@best_of by the gold verifier from unranked samples); cost per request and per 1k
delivered tokens from the server's cost model (`usage.bonserve`: attributed engine-seconds and,
if the server was given `--accelerator-price-per-hour`, dollars); and plots of quality vs p50
latency and quality vs cost with the Pareto frontier marked.

The server must serve every model named (registry entries; `--load-models` loads missing
ones through the admin API) and, for best_of > 1, have a reward model. Measure with nothing
else hitting the server: the cost counters on /metrics are read as deltas over each run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from core.flags import add_flags, config_from_args
from loadtests.config import Cell, LoadTestConfig, expand_matrix

MATRIX_KEYS = ("models", "best_of", "temperatures", "cells")
PER_CELL = ("model", "best_of", "temperature")


def _csv(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        return [kind(part) for part in text.split(",") if part.strip()]

    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse


def make_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`run` and `compare` subcommands on `parser`."""
    sub = parser.add_subparsers(dest="loadtest_command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    run = sub.add_parser("run", help="Measure one configuration.", description=__doc__, formatter_class=fmt)
    add_flags(run, LoadTestConfig)
    run.set_defaults(func=cmd_run)

    compare = sub.add_parser(
        "compare",
        help="Measure a matrix models x best_of x temperature.",
        description=__doc__,
        formatter_class=fmt,
    )
    compare.add_argument("--matrix", type=Path, default=None, help="YAML matrix (see above).")
    for flag, kind, help_text in (
        ("models", str, "Served model names, comma-separated."),
        ("best-of", int, "best_of values, comma-separated (e.g. 1,2,4,8)."),
        ("temperatures", float, "Temperatures, comma-separated (default 0.8)."),
    ):
        compare.add_argument(
            f"--{flag}",
            dest="matrix_" + flag.replace("-", "_"),
            type=_csv(kind),
            default=argparse.SUPPRESS,
            help=help_text,
        )
    compare.add_argument("--title", default="Best-of-N vs tuned policies", help="Report title.")
    add_flags(compare, LoadTestConfig, exclude=PER_CELL, recipe=False)
    compare.set_defaults(func=cmd_compare)
    return parser


def add_loadtest_command(sub: Any) -> None:
    """Register `bonserve loadtest` on the top-level subparsers."""
    make_parser(
        sub.add_parser(
            "loadtest",
            help="Load-test a running server; compare BoN and tuned "
            "policies (latency, throughput, quality, cost).",
        )
    )


def _config(args: argparse.Namespace, yaml_values: dict[str, Any]) -> LoadTestConfig:
    names = {f.name for f in dataclasses.fields(LoadTestConfig)}
    unknown = set(yaml_values) - names
    if unknown:
        raise ValueError(f"unknown matrix/config keys {sorted(unknown)}; known: {sorted(names)}")
    return config_from_args(LoadTestConfig, args, recipe_values=yaml_values)


def _quiet_http_logs() -> None:
    """One INFO line per request from the HTTP client would bury the progress bar."""
    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _finish(report: dict[str, Any], out: Path | None) -> None:
    from loadtests.report import mark_pareto, to_markdown, write_report

    if out is None:
        mark_pareto(report["rows"])
        print(to_markdown(report))
        return
    paths = write_report(report, out)
    print(to_markdown(report))
    print("wrote " + ", ".join(map(str, paths)))


def cmd_run(args: argparse.Namespace) -> int:
    from loadtests.compare import run_matrix

    _quiet_http_logs()
    try:
        cfg = _config(args, {})
        report = asyncio.run(
            run_matrix(cfg, [Cell(cfg.model, cfg.best_of, cfg.temperature)], title=f"Load test: {cfg.label}")
        )
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _finish(report, cfg.out)
    return 0


def matrix_from(args: argparse.Namespace) -> tuple[LoadTestConfig, list[Cell]]:
    """The shared config and the cells of `compare`: YAML file first, flags over it."""
    import yaml

    values: dict[str, Any] = {}
    if args.matrix is not None:
        values = yaml.safe_load(args.matrix.read_text()) or {}
    matrix = {k: values.pop(k, None) for k in MATRIX_KEYS}
    for key in MATRIX_KEYS[:3]:
        if f"matrix_{key}" in vars(args):
            matrix[key] = getattr(args, f"matrix_{key}")
    cfg = _config(args, values)
    product = any(matrix[k] for k in MATRIX_KEYS[:3]) or not matrix["cells"]  # else cells only
    cells = expand_matrix(
        (matrix["models"] or [cfg.model]) if product else [],
        matrix["best_of"] or [1],
        matrix["temperatures"] or [cfg.temperature],
        matrix["cells"],
    )
    return cfg, cells


def cmd_compare(args: argparse.Namespace) -> int:
    from loadtests.compare import run_matrix

    _quiet_http_logs()
    try:
        cfg, cells = matrix_from(args)
        if cfg.out is None:
            cfg.out = Path("loadtest-report")
        report = asyncio.run(run_matrix(cfg, cells, title=args.title))
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _finish(report, cfg.out)
    return 0
