"""Run one configuration against a running server and summarise it as one report row.

Phases, in order, so that nothing but the measured requests shares the server while timing:
1. warm-up: `warmup_requests` sent one at a time (not measured);
2. measured: requests sent at the scheduled arrival times (loadtests.schedule), at most
   `concurrency` in flight, until `num_requests` were sent or `duration_s` passed; the
   bonserve cost counters on /metrics are read before and after;
3. quality: each delivered answer scored by the task's gold verifier, or, with no task, by
   the server's reward model (POST /v1/rewards) if it has one.
The oracle ceiling is sampled afterwards, by loadtests.compare, once per (model, temperature).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from openai import AsyncOpenAI
from tqdm.auto import tqdm

from loadtests.client import RequestResult, sampling_body, stream_chat
from loadtests.config import LoadTestConfig
from loadtests.endpoints import COST_COUNTERS, counter_totals
from loadtests.prompts import Prompt
from loadtests.quality import score_quality
from loadtests.schedule import arrival_times
from loadtests.stats import mean_ci95, request_metrics


def openai_client(cfg: LoadTestConfig) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=cfg.v1_url, api_key=cfg.key, max_retries=0, timeout=cfg.request_timeout_s)


def body_for(cfg: LoadTestConfig, prompt: Prompt) -> dict[str, Any]:
    return sampling_body(prompt, cfg.model, cfg.best_of, cfg.temperature, cfg.max_tokens, cfg.top_p)


async def send_all(
    cfg: LoadTestConfig, client: AsyncOpenAI, prompts: list[Prompt]
) -> tuple[list[RequestResult], float]:
    """The measured phase: (results of the requests sent, duration from the first send to the
    last completion)."""
    offsets = arrival_times(cfg.num_requests, cfg.request_rate, cfg.burstiness, cfg.seed)
    limit = asyncio.Semaphore(cfg.concurrency) if cfg.concurrency else contextlib.nullcontext()
    bar = tqdm(total=len(offsets), desc=cfg.label, unit="req", disable=not cfg.progress)
    start = time.perf_counter()
    deadline = start + cfg.duration_s if cfg.duration_s else float("inf")

    async def one(i: int) -> RequestResult | None:
        async with limit:
            if time.perf_counter() >= deadline:  # closed loop: the slot came too late
                return None
            prompt = prompts[i % len(prompts)]
            result = await stream_chat(client, prompt, body_for(cfg, prompt), start)
        bar.update()
        return result

    tasks = []
    for i, offset in enumerate(offsets):
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.perf_counter() >= deadline:
            break
        tasks.append(asyncio.create_task(one(i)))
    done = [r for r in await asyncio.gather(*tasks) if r is not None]
    bar.close()
    return done, time.perf_counter() - start


async def run_config(cfg: LoadTestConfig, prompts: list[Prompt]) -> dict[str, Any]:
    """One report row: vLLM-style latency/throughput/goodput, tokens, cost and quality, plus
    every request (`requests`)."""
    async with openai_client(cfg) as client:
        for i in range(cfg.warmup_requests):
            prompt = prompts[-1 - i % len(prompts)]
            await stream_chat(client, prompt, body_for(cfg, prompt), time.perf_counter())
        before = await counter_totals(cfg)
        results, duration = await send_all(cfg, client, prompts)
        after = await counter_totals(cfg)
    row: dict[str, Any] = {
        "model": cfg.model,
        "best_of": cfg.best_of,
        "temperature": cfg.temperature,
        "label": cfg.label,
        **request_metrics(results, duration, cfg.goodput),
    }
    for name in COST_COUNTERS:  # cross-checks the usage-based cost (other traffic would show)
        row[f"{name}_delta"] = after[name] - before[name]

    row["quality_source"] = await score_quality(cfg, prompts, results)
    row["quality"], row["quality_ci95"] = mean_ci95(
        [r.quality for r in results if r.success and r.quality is not None]
    )
    row["server_reward_mean"] = mean_ci95([r.server_reward for r in results if r.server_reward is not None])[
        0
    ]
    row["requests"] = [_public(r) for r in results]
    return row


def _public(r: RequestResult) -> dict[str, Any]:
    """One request in the JSON report (text truncated: the report is for people)."""
    d = {k: v for k, v in r.__dict__.items() if k != "itl"}
    d["text"] = r.text[:200]
    return d
