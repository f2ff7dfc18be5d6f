"""One chat request through the official async `openai` client, timed, into a RequestResult.

Timing follows `vllm bench serve` with one correction for Best-of-N:
- TTFT is measured to the first chunk that *delivers content*. Role-only chunks do not count
  (bonserve sends the role chunk before decoding starts), and under BoN the content arrives
  only after every candidate was decoded and scored, so TTFT includes all of that.
- ITL is the gap between consecutive content chunks; E2EL runs to the end of the stream.
- Token counts come from the usage chunk (`stream_options.include_usage`): bonserve's
  `usage.bonserve.delivered_tokens` / `decoded_tokens` when present (OpenAI's
  `completion_tokens` counts every decoded BoN candidate), else `completion_tokens` for both.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from openai import AsyncOpenAI

from loadtests.prompts import Prompt


@dataclass
class RequestResult:
    """What one request did. Times in seconds; `start` is relative to the run's start."""

    prompt_index: int
    success: bool = False
    error: str = ""
    start: float = 0.0
    ttft: float = math.nan
    latency: float = math.nan  # end-to-end
    itl: list[float] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int = 0
    delivered_tokens: int = 0
    decoded_tokens: int = 0
    candidates: int = 1
    reward_model_tokens: int = 0
    engine_seconds: float | None = None  # bonserve cost model: attributed replica-seconds
    cost_usd: float | None = None
    server_reward: float | None = None  # the chosen candidate's reward (BoN only)
    quality: float | None = None  # filled in after the run (gold verifier or reward model)


def sampling_body(
    prompt: Prompt, model: str, best_of: int, temperature: float, max_tokens: int, top_p: float | None
) -> dict[str, Any]:
    """Arguments of `chat.completions.create` shared by measured and oracle requests.

    best_of is always sent, even 1, so a server default (`--default-best-of`) cannot turn a
    plain row into a BoN row.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": prompt.messages,
        "temperature": temperature,
        "max_tokens": prompt.max_tokens or max_tokens,
        "extra_body": {"best_of": best_of},
    }
    if top_p is not None:
        body["top_p"] = top_p
    return body


async def stream_chat(
    client: AsyncOpenAI, prompt: Prompt, body: dict[str, Any], t_zero: float
) -> RequestResult:
    """Send one streamed request; never raises (failures come back with success=False)."""
    result = RequestResult(prompt.index)
    t0 = time.perf_counter()
    result.start = t0 - t_zero
    last = t0
    parts: list[str] = []
    usage = None
    try:
        stream = await client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **body
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    if parts:
                        result.itl.append(now - last)
                    else:
                        result.ttft = now - t0
                    last = now
                    parts.append(choice.delta.content)
                reward = (choice.model_extra or {}).get("reward")
                if reward is not None:
                    result.server_reward = float(reward)
        result.latency = time.perf_counter() - t0
    except Exception as exc:  # any failure is a data point, not a crash of the load test
        result.error = f"{type(exc).__name__}: {exc}"[:500]
        return result
    result.success = True
    result.text = "".join(parts)
    if math.isnan(result.ttft):  # an empty completion: the answer was "delivered" at the end
        result.ttft = result.latency
    _read_usage(result, usage, len(parts))
    return result


def _read_usage(result: RequestResult, usage: Any, chunks: int) -> None:
    if usage is None:  # a server that ignores include_usage: count content chunks instead
        result.delivered_tokens = result.decoded_tokens = chunks
        return
    result.prompt_tokens = usage.prompt_tokens
    result.delivered_tokens = result.decoded_tokens = usage.completion_tokens
    extra = (usage.model_extra or {}).get("bonserve")
    if extra:
        result.delivered_tokens = extra["delivered_tokens"]
        result.decoded_tokens = extra["decoded_tokens"]
        result.candidates = extra["candidates"]
        result.reward_model_tokens = extra.get("reward_model_tokens") or 0
        result.engine_seconds = extra.get("engine_seconds")
        result.cost_usd = extra.get("estimated_cost_usd")


async def sample_candidates(client: AsyncOpenAI, prompt: Prompt, body: dict[str, Any], k: int) -> list[str]:
    """k candidates of one prompt, unranked: `n=k` with `best_of=k`, so the server samples
    exactly what a BoN-k request would and returns all of it (for the oracle ceiling)."""
    body = {**body, "n": k, "extra_body": {**body.get("extra_body", {}), "best_of": k}}
    response = await client.chat.completions.create(**body)
    return [c.message.content or "" for c in response.choices]
