"""Run a matrix of configurations (served model x best_of x temperature) against one server,
with the same prompts and arrival process in every cell, then the oracle ceilings, and build
the report (loadtests.report writes it).

Cells run one after another, in the order given. Oracle samples are drawn after every cell
has been measured, once per (model, temperature) with m = the largest best_of of that group,
so they never share the server with a measured run.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from loadtests.config import Cell, LoadTestConfig
from loadtests.endpoints import ensure_models
from loadtests.prompts import load_prompts, task_of
from loadtests.quality import oracle_at, oracle_samples
from loadtests.run import openai_client, run_config


async def run_matrix(cfg: LoadTestConfig, cells: list[Cell], title: str = "Load test") -> dict[str, Any]:
    """The report dict (settings, one row per cell) for loadtests.report.write_report."""
    if not cells:
        raise ValueError("the matrix has no cells")
    await ensure_models(cfg, [c.model for c in cells])
    prompts = load_prompts(cfg)
    rows = [await run_config(cfg.for_cell(cell), prompts) for cell in cells]

    if cfg.oracle and task_of(cfg) is not None:
        groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            if row["best_of"] > 1:
                groups[(row["model"], row["temperature"])].append(row)
        for (model, temperature), members in groups.items():
            m = max(r["best_of"] for r in members)
            used = sorted({q["prompt_index"] for r in members for q in r["requests"]})
            group_cfg = cfg.for_cell(Cell(model, m, temperature))
            async with openai_client(group_cfg) as client:
                rewards = await oracle_samples(group_cfg, client, [prompts[i] for i in used], m)
            for r in members:
                r["oracle"] = oracle_at(rewards, r["best_of"])
                r["oracle_prompts"] = len(rewards)
                r["oracle_samples_per_prompt"] = m
    return {
        "title": title,
        "generated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": cfg.settings(),
        "cells": [c.__dict__ for c in cells],
        "rows": rows,
    }
