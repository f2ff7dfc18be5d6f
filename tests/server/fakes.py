"""Named fakes of vLLM's AsyncLLM for fast unit tests of the HTTP and serving layers.

They model only what bonserve touches: `generate` as an async iterator of RequestOutput-like
objects, `errored`, `get_tokenizer`, `model_config`, `shutdown`. Real behaviour is covered by
the engine tests, which start real vLLM engines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any


class FakeTokenizer:
    eos_token_id = 0

    def __len__(self) -> int:
        return 1000

    def apply_chat_template(
        self, messages: list[dict[str, str]], tokenize: bool = True, **_: Any
    ) -> list[int] | str:
        text = " ".join(m["content"] for m in messages)
        return ([1 + (ord(c) % 900) for c in text] or [1]) if tokenize else text

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [1 + (ord(c) % 900) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "x" * len(ids)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [f"t{i}" for i in ids]


@dataclass
class FakeCompletion:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = "stop"
    logprobs: Any = None


@dataclass
class FakeAsyncLLM:
    """Answers every request with `reply` per candidate after `delay_s`."""

    reply: str = "fake answer"
    delay_s: float = 0.0
    max_model_len: int = 128
    die_on_generate: bool = False
    errored: bool = False
    requests: list[Any] = field(default_factory=list)
    aborted: int = 0

    def __post_init__(self) -> None:
        self.model_config = SimpleNamespace(max_model_len=self.max_model_len, dtype="torch.float32")

    def get_tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer()

    def get_num_unfinished_requests(self) -> int:
        return 0

    def shutdown(self) -> None:
        self.errored = True

    async def generate(
        self, prompt: Any, params: Any, request_id: str, lora_request: Any = None
    ) -> AsyncIterator[Any]:
        from vllm.v1.engine.exceptions import EngineDeadError

        self.requests.append(params)
        if self.die_on_generate:
            self.errored = True
            raise EngineDeadError()
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.aborted += 1
            raise
        words = self.reply.split()
        outs = [
            FakeCompletion(i, f"{self.reply} {i}", list(range(1, len(words) + 2))) for i in range(params.n)
        ]
        yield SimpleNamespace(outputs=outs, finished=True)


@dataclass
class FakeRewardLLM:
    """A fake pooling engine: the reward of a sequence is its length minus `offset`."""

    offset: float = 0.0
    max_model_len: int = 4096
    errored: bool = False
    die_on_encode: bool = False

    def __post_init__(self) -> None:
        self.model_config = SimpleNamespace(max_model_len=self.max_model_len, dtype="torch.float32")

    def get_tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer()

    def get_num_unfinished_requests(self) -> int:
        return 0

    def shutdown(self) -> None:
        self.errored = True

    async def encode(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[Any]:
        import torch
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.die_on_encode:
            self.errored = True
            raise EngineDeadError()

        score = float(len(prompt["prompt_token_ids"])) - self.offset
        yield SimpleNamespace(outputs=SimpleNamespace(data=torch.tensor([score])), finished=True)


@dataclass
class FakeVaryingLLM(FakeAsyncLLM):
    """Candidate i answers with i+1 words, so a length-based fake reward prefers the last."""

    finish_reasons: tuple[str, ...] = ()

    async def generate(
        self, prompt: Any, params: Any, request_id: str, lora_request: Any = None
    ) -> AsyncIterator[Any]:
        self.requests.append(params)
        outs = []
        for i in range(params.n):
            reason = self.finish_reasons[i] if i < len(self.finish_reasons) else "stop"
            outs.append(FakeCompletion(i, " ".join(["w"] * (i + 1)), list(range(i + 1)), reason))
        yield SimpleNamespace(outputs=outs, finished=True)


@dataclass
class FakeTwoStepLLM(FakeAsyncLLM):
    """Streams two increments: candidate 0 finishes in the first, the rest in the second,
    `gap_s` later. Appends ("policy-step", i) to `events` as it goes."""

    gap_s: float = 0.2
    events: list[Any] = field(default_factory=list)

    async def generate(
        self, prompt: Any, params: Any, request_id: str, lora_request: Any = None
    ) -> AsyncIterator[Any]:
        self.events.append(("policy-step", 1))
        first = [FakeCompletion(0, "short", [1], "stop")] + [
            FakeCompletion(i, "long", [1], None) for i in range(1, params.n)
        ]
        yield SimpleNamespace(outputs=first, finished=False)
        await asyncio.sleep(self.gap_s)
        self.events.append(("policy-step", 2))
        rest = [FakeCompletion(i, " answer", [2], "stop") for i in range(1, params.n)]
        yield SimpleNamespace(outputs=rest, finished=True)


@dataclass
class FakeRecordingRewardLLM(FakeRewardLLM):
    events: list[Any] = field(default_factory=list)

    async def encode(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[Any]:
        self.events.append(("score", request_id))
        async for out in super().encode(prompt, params, request_id):
            yield out


class FakeRewardScorer:
    """Stands in for server.reward.RewardScorer in Best-of-N unit tests: token ids are one
    per character, the reward of a sequence is its length, and every `score` call is logged
    in `calls` (request id) before it awaits `delay_s`."""

    def __init__(self, delay_s: float = 0.0, calls: list[str] | None = None) -> None:
        self.delay_s = delay_s
        self.calls: list[str] = [] if calls is None else calls

    def conversation_ids(self, messages: list[dict[str, str]], response: str) -> list[int]:
        return [1] * (sum(len(m["content"]) for m in messages) + len(response))

    async def score(self, sequences: Sequence[list[int]], request_id: str) -> list[float]:
        self.calls.append(request_id)
        await asyncio.sleep(self.delay_s)
        return [float(len(s)) for s in sequences]


@dataclass
class FakeLoRAAsyncLLM(FakeAsyncLLM):
    """A fake policy engine with LoRA on: records the adapters added and removed."""

    adapters: dict[int, str] = field(default_factory=dict)

    async def add_lora(self, request: Any) -> bool:
        self.adapters[request.lora_int_id] = request.lora_name
        return True

    async def remove_lora(self, lora_id: int) -> bool:
        return self.adapters.pop(lora_id, None) is not None


@dataclass
class FakeEngineBuilder:
    """Stands in for server.engine_config.EngineBuilder in ModelManager unit tests: every
    engine it builds is a fake (policy: FakeLoRAAsyncLLM, reward: FakeRewardLLM), and each
    build is logged in `built` as (role, path name, served name)."""

    settings: Any
    lora_override: tuple[int, int] | None = None
    built: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def policy_options(self) -> Any:
        import dataclasses

        opts = self.settings.engine_options()
        if self.lora_override is not None:
            max_loras, max_lora_rank = self.lora_override
            opts = dataclasses.replace(opts, max_loras=max_loras, max_lora_rank=max_lora_rank)
        return opts

    def policy(self, path: Any, name: str, metrics_name: str | None = None) -> Any:
        self.built.append(("policy", path.name, name))
        return FakeLoRAAsyncLLM

    def reward(self, path: Any, name: str, metrics_name: str | None = None) -> Any:
        return self.reranker(path, name, metrics_name, "rm")

    def reranker(self, path: Any, name: str, metrics_name: str | None, kind: str) -> Any:
        self.built.append(("reward" if kind == "rm" else kind, path.name, name))
        return FakeRewardLLM


@dataclass
class FakeTimedLLM(FakeAsyncLLM):
    """Records the (start, end) of every generate call, however it ends: an independent
    account of the time requests spent in the engine. max_tokens is the test's marker:
    3 fails inside the engine after the delay, 5 takes 10x the delay (to meet a deadline)."""

    intervals: list[tuple[float, float]] = field(default_factory=list)

    async def generate(
        self, prompt: Any, params: Any, request_id: str, lora_request: Any = None
    ) -> AsyncIterator[Any]:
        import time

        start = time.monotonic()
        try:
            await asyncio.sleep(self.delay_s * (10 if params.max_tokens == 5 else 1))
            if params.max_tokens == 3:  # the test's marker for "this request fails in the engine"
                raise RuntimeError("fake engine failure")
            async for out in super().generate(prompt, params, request_id, lora_request):
                yield out
        finally:
            self.intervals.append((start, time.monotonic()))


@dataclass
class FakeSeededStepLLM(FakeAsyncLLM):
    """Decodes `steps` tokens, one per delta; candidate i's tokens are `(seed + i) % 10 + 1`
    characters wide (so the length reward prefers higher seeds, and a pruned request's n=1
    candidate i, seeded seed + i, samples what child i of the n>1 request does); counts the
    requests aborted before they finished."""

    steps: int = 10

    async def generate(
        self, prompt: Any, params: Any, request_id: str, lora_request: Any = None
    ) -> AsyncIterator[Any]:
        self.requests.append(params)
        seed = params.seed or 0
        try:
            for step in range(self.steps):
                await asyncio.sleep(0)
                reason = "stop" if step == self.steps - 1 else None
                outs = [FakeCompletion(i, "w" * ((seed + i) % 10 + 1), [5], reason) for i in range(params.n)]
                yield SimpleNamespace(outputs=outs, finished=bool(reason))
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted += 1
            raise


@dataclass
class FakeResumableStepLLM(FakeAsyncLLM):
    """Like FakeSeededStepLLM, for "hold" pruning: a candidate has `steps` tokens in all, and a
    request whose prompt is longer than the first prompt seen (a resumed candidate: prompt +
    its tokens so far) decodes only what is left; every request stops at its max_tokens with
    "length". Candidate tokens are `(seed + i) % 10 + 1` characters wide, a resumed one's as
    wide as its first segment's (`widths`, by request id stem). Records prompts and requests."""

    steps: int = 10
    prompts: list[list[int]] = field(default_factory=list)
    widths: dict[str, int] = field(default_factory=dict)

    async def generate(
        self, prompt: Any, params: Any, request_id: str, lora_request: Any = None
    ) -> AsyncIterator[Any]:
        ids = list(prompt["prompt_token_ids"])
        self.requests.append(params)
        self.prompts.append(ids)
        done = len(ids) - len(self.prompts[0])
        stem = request_id.split("-r")[0]
        width = self.widths.setdefault(stem, ((params.seed or 0) % 10) + 1)
        end = min(self.steps, done + params.max_tokens)
        try:
            for pos in range(done, end):
                await asyncio.sleep(0)
                reason = None if pos < end - 1 else ("stop" if end == self.steps else "length")
                outs = [
                    FakeCompletion(i, "w" * ((width + i - 1) % 10 + 1), [5], reason) for i in range(params.n)
                ]
                yield SimpleNamespace(outputs=outs, finished=bool(reason))
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted += 1
            raise
