"""Quality of delivered answers and the oracle ceiling of Best-of-N.

- Quality is the gold reward (task verifier, in [0, 1]) of every delivered answer; with no task
  it is the server's reward-model score (`/v1/rewards`, unbounded, comparable only between rows
  scored by the same reward model); with neither it is omitted.
- The oracle ceiling of a BoN-k row is what a perfect reranker would get from the same policy
  and temperature: for each prompt, m >= k candidates are sampled *unranked* (one
  non-streamed request with n=m and best_of=m, so nothing is reranked away), each is scored
  by the gold verifier, and the expected best of k drawn from the m (pass@k for 0/1 rewards,
  `stats.oracle_at_k`) is averaged over prompts. A comparison samples m = its largest best_of
  once per (model, temperature) and reads every k from it.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Sequence
from typing import Any

from openai import AsyncOpenAI
from tqdm.auto import tqdm

from loadtests.client import RequestResult, sample_candidates, sampling_body
from loadtests.config import LoadTestConfig
from loadtests.endpoints import reward_scores
from loadtests.prompts import Prompt, task_of
from loadtests.stats import oracle_at_k


async def score_quality(
    cfg: LoadTestConfig, prompts: Sequence[Prompt], results: Sequence[RequestResult]
) -> str | None:
    """Fill `quality` of each successful result; returns what scored them ("gold:TASK",
    "reward_model") or None."""
    ok = [r for r in results if r.success]
    task = task_of(cfg)
    if task is not None:
        for r in ok:
            example = prompts[r.prompt_index].example
            assert example is not None
            r.quality = task.reward(example, r.text)
        return f"gold:{task.name}"
    scores = await reward_scores(cfg, [(prompts[r.prompt_index].messages, r.text) for r in ok])
    if scores is None:
        return None
    for r, s in zip(ok, scores, strict=True):
        r.quality = s
    return "reward_model"


async def oracle_samples(
    cfg: LoadTestConfig, client: AsyncOpenAI, prompts: Sequence[Prompt], m: int
) -> dict[int, list[float]]:
    """Prompt index -> gold rewards of m unranked samples (concurrency as configured)."""
    task = task_of(cfg)
    assert task is not None, "the oracle needs a task's gold verifier"
    limit = asyncio.Semaphore(cfg.concurrency or 8)
    bar = tqdm(
        total=len(prompts),
        desc=f"oracle {cfg.model} n={m} T={cfg.temperature:g}",
        unit="prompt",
        disable=not cfg.progress,
    )

    async def one(prompt: Prompt) -> tuple[int, list[float]] | None:
        body: dict[str, Any] = sampling_body(prompt, cfg.model, m, cfg.temperature, cfg.max_tokens, cfg.top_p)
        async with limit:
            try:
                texts = await sample_candidates(client, prompt, body, m)
            except Exception:  # a failed prompt is left out; the report counts the prompts
                return None
            finally:
                bar.update()
        assert prompt.example is not None
        return prompt.index, [task.reward(prompt.example, t) for t in texts]

    out = dict(p for p in await asyncio.gather(*(one(p) for p in prompts)) if p is not None)
    bar.close()
    return out


def oracle_at(rewards: dict[int, list[float]], k: int) -> float:
    """Mean over prompts of the expected best gold reward of k samples (NaN for none)."""
    return statistics.fmean(oracle_at_k(r, k) for r in rewards.values()) if rewards else math.nan
