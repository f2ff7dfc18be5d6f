"""Request handling that knows nothing of HTTP: validate against limits, build sampling
parameters, run the engine, assemble OpenAI responses or SSE chunks.

Routes call `ChatServing.create` / `CompletionServing.create`; each returns a response model
or an async iterator of SSE lines. Every failure is an `APIError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from server import metrics
from server.admission import Admission, Lease
from server.config import Settings
from server.engines import EngineUnavailable
from server.errors import APIError, bad_request, unavailable
from server.models import ModelRouter, ServedModel
from server.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceLogprobs,
    DeltaMessage,
    ResponseMessage,
    SamplingFields,
    TokenLogprob,
    TopLogprob,
    Usage,
    UsageBreakdown,
    new_id,
    now,
)
from server.reward import Ranked, RewardScorer, rank_candidates

logger = logging.getLogger("bonserve.serving")


# --------------------------------------------------------------------------- engine calls


@dataclass
class StreamTally:
    """What a streamed request used, filled in while it streams."""

    tokens: int = 0
    first_token_seen: bool = False
    lease: Lease = field(default_factory=Lease)


@dataclass
class Candidate:
    """One sampled completion, assembled from the engine's streamed increments."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] | None = None
    finish_reason: str | None = None

    def extend(self, delta: Any) -> None:
        self.text += delta.text
        self.token_ids.extend(delta.token_ids)
        if delta.logprobs is not None:
            self.logprobs = (self.logprobs or []) + list(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason


@dataclass
class PreparedRequest:
    """Everything the engine needs for one request, validated."""

    model: ServedModel
    engine: Any
    prompt_ids: list[int]
    params: Any  # vllm.SamplingParams; params.n is the number of candidates sampled
    n: int  # choices returned
    request_id: str
    messages: list[dict[str, str]] | None = None  # chat: what the reward model sees
    prompt_text: str = ""
    arrived: float = field(default_factory=time.perf_counter)

    @property
    def best_of(self) -> int:
        return self.params.n

    @property
    def mode(self) -> str:
        return "bon" if self.best_of > self.n else "single"


def _engine_error(model: ServedModel, engine: Any, exc: BaseException) -> APIError:
    """Map vLLM's exceptions to client-visible errors; schedule a restart on engine death."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, EngineDeadError):
        asyncio.get_running_loop().create_task(model.engine.report_dead(str(exc), engine))
        return unavailable(f"the engine serving '{model.name}' died and is restarting; retry")
    if isinstance(exc, GracefulHTTPError):
        return APIError(int(exc.http_status), exc.message, type="server_error")
    if isinstance(exc, VLLMClientError | ValueError):  # vLLM's request validation
        return bad_request(str(exc))
    logger.exception("engine error for %s", model.name, exc_info=exc)
    return APIError(500, f"engine error: {type(exc).__name__}", type="server_error")


async def run_to_completion(prep: PreparedRequest) -> Any:
    """Run a request with FINAL_ONLY output and check every candidate arrived."""
    final = None
    try:
        async for out in prep.engine.generate(
            {"prompt_token_ids": prep.prompt_ids},
            prep.params,
            prep.request_id,
            lora_request=prep.model.lora,
        ):
            final = out
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise _engine_error(prep.model, prep.engine, exc) from exc
    if final is None or len(final.outputs) != prep.params.n:
        got = 0 if final is None else len(final.outputs)
        raise APIError(500, f"engine returned {got} of {prep.params.n} candidates", type="server_error")
    return final


async def stream_deltas(prep: PreparedRequest) -> AsyncIterator[Any]:
    try:
        async for out in prep.engine.generate(
            {"prompt_token_ids": prep.prompt_ids},
            prep.params,
            prep.request_id,
            lora_request=prep.model.lora,
        ):
            yield out
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except Exception as exc:
        raise _engine_error(prep.model, prep.engine, exc) from exc


# --------------------------------------------------------------------------- shared logic


class BaseServing:
    def __init__(
        self,
        settings: Settings,
        router: ModelRouter,
        admission: Admission,
        reward: RewardScorer | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.admission = admission
        self.reward = reward

    def _engine_for(self, model: ServedModel) -> Any:
        try:
            return model.engine.require()
        except EngineUnavailable as exc:
            raise unavailable(str(exc)) from exc

    def mode(self, req: SamplingFields) -> str:
        """ "bon" or "single", for metric labels (never raises)."""
        try:
            return "bon" if self._candidates(req, self.router.resolve(req.model)) > req.n else "single"
        except APIError:
            return "single"

    def _candidates(self, req: SamplingFields, model: ServedModel) -> int:
        """How many candidates to sample: the request's best_of, else the model's default."""
        if req.n > self.settings.max_n:
            raise bad_request(f"n={req.n} exceeds this server's limit of {self.settings.max_n}", "n")
        if req.best_of is not None:
            if req.best_of > self.settings.max_best_of:
                raise bad_request(
                    f"best_of={req.best_of} exceeds this server's limit of {self.settings.max_best_of}",
                    "best_of",
                )
            if req.best_of > req.n and self.reward is None:
                raise bad_request(
                    "best_of > n needs a reward model to rerank candidates; this server has none "
                    "(start it with --reward-model)",
                    "best_of",
                )
            return req.best_of
        default = self.settings.best_of_for(model.name) if self.reward is not None else 1
        return max(req.n, default)

    async def _generate_ranked(self, prep: PreparedRequest) -> tuple[list[Any], Ranked | None, Lease]:
        """Run the request; with best_of > n, rerank. Returns (all candidates, ranking, lease)."""
        async with self.admission.slot(prep.model.name) as lease, self._deadline():
            if prep.best_of == prep.n:
                final = await run_to_completion(prep)
                return list(final.outputs), None, lease
            outputs, ranked = await self._sample_and_score(prep)
        return outputs, ranked, lease

    async def _sample_and_score(self, prep: PreparedRequest) -> tuple[list[Candidate], Ranked]:
        """Best-of-N: each candidate is scored as soon as it finishes, while the others are
        still decoding, so only the scoring of the last one adds to the latency."""
        assert self.reward is not None
        candidates = [Candidate(i) for i in range(prep.best_of)]
        scoring: dict[int, asyncio.Task[tuple[float, int]]] = {}
        try:
            async for out in stream_deltas(prep):
                for o in out.outputs:
                    candidate = candidates[o.index]
                    candidate.extend(o)
                    if o.finish_reason is not None and o.index not in scoring:
                        scoring[o.index] = asyncio.create_task(self._score(prep, candidate))
            if len(scoring) != prep.best_of:
                raise APIError(
                    500, f"engine finished {len(scoring)} of {prep.best_of} candidates", type="server_error"
                )
            decoded = time.perf_counter()
            scored = await asyncio.gather(*(scoring[i] for i in range(prep.best_of)))
            metrics.REWARD_SCORING.labels(prep.model.name).observe(time.perf_counter() - decoded)
        finally:
            for task in scoring.values():
                task.cancel()
        rewards = [r for r, _ in scored]
        order = rank_candidates(rewards, [c.finish_reason for c in candidates], self.settings.length_penalty)
        return candidates, Ranked(order=order, rewards=rewards, reward_tokens=sum(n for _, n in scored))

    async def _score(self, prep: PreparedRequest, candidate: Candidate) -> tuple[float, int]:
        """(reward, tokens scored) of one finished candidate."""
        assert self.reward is not None
        if prep.messages is not None:
            ids = self.reward.conversation_ids(prep.messages, candidate.text)
        else:
            ids = self.reward.text_ids(prep.prompt_text + candidate.text)
        (reward,) = await self.reward.score([ids], f"{prep.request_id}-c{candidate.index}")
        return reward, len(ids)

    async def _increments(self, prep: PreparedRequest, tally: StreamTally) -> AsyncIterator[Any]:
        """A streamed request's increments that carry text or a finish reason, inside an
        admission slot and the deadline; counts tokens and times the first one."""
        async with self.admission.slot(prep.model.name) as tally.lease, self._deadline():
            async for out in stream_deltas(prep):
                for o in out.outputs:
                    tally.tokens += len(o.token_ids)
                    if not o.text and not o.finish_reason:
                        continue
                    if o.text and not tally.first_token_seen:
                        tally.first_token_seen = True
                        self._first_token(prep)
                    yield o

    def _max_tokens(self, requested: int | None, prompt_len: int, max_model_len: int) -> int:
        if requested is not None and requested > self.settings.max_tokens_limit:
            raise bad_request(
                f"max_tokens={requested} exceeds this server's limit of {self.settings.max_tokens_limit}",
                "max_tokens",
            )
        room = max_model_len - prompt_len
        if room < 1:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens; the prompt has "
                f"{prompt_len} tokens.",
                "messages",
                "context_length_exceeded",
            )
        if requested is None:
            return min(self.settings.default_max_tokens, room)
        if requested > room:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens. However, you "
                f"requested {prompt_len + requested} tokens ({prompt_len} in the prompt, "
                f"{requested} for the completion).",
                "max_tokens",
                "context_length_exceeded",
            )
        return requested

    def _sampling_params(
        self,
        req: SamplingFields,
        *,
        candidates: int,
        max_tokens: int,
        logprobs: int | None,
        delta: bool,
        vocab_size: int,
        structured: Any = None,
    ) -> Any:
        """vLLM SamplingParams; `delta` streams increments (streaming, and Best-of-N, which
        scores candidates as they finish) instead of one final output."""
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind

        logit_bias = None
        if req.logit_bias:
            logit_bias = {int(k): v for k, v in req.logit_bias.items()}
            bad = [k for k in logit_bias if not 0 <= k < vocab_size]
            if bad:
                raise bad_request(f"logit_bias has token ids outside the vocabulary: {bad}", "logit_bias")
        stop = [req.stop] if isinstance(req.stop, str) else req.stop
        try:
            return SamplingParams(
                n=candidates,
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=req.top_k or 0,
                min_p=req.min_p or 0.0,
                repetition_penalty=req.repetition_penalty or 1.0,
                presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty,
                max_tokens=max_tokens,
                stop=stop,
                seed=req.seed,
                logprobs=logprobs,
                logit_bias=logit_bias,
                structured_outputs=structured,
                output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY,
            )
        except (VLLMClientError, ValueError) as exc:  # vLLM's own checks (e.g. empty stop)
            raise bad_request(str(exc), getattr(exc, "parameter", None)) from exc

    @contextlib.asynccontextmanager
    async def _deadline(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                yield
        except TimeoutError:
            raise APIError(
                504,
                f"request exceeded the server's {self.settings.request_timeout_s:g}s timeout",
                type="timeout_error",
                code="request_timeout",
            ) from None

    def _account(
        self, prep: PreparedRequest, decoded: int, delivered: int, ranked: Ranked | None, lease: Lease
    ) -> Usage:
        """Usage for the response and the same numbers as metrics. completion_tokens counts
        every decoded candidate (as OpenAI billed legacy best_of)."""
        name, mode = prep.model.name, prep.mode
        reward_tokens = ranked.reward_tokens if ranked else 0
        cost = lease.engine_seconds * self.settings.accelerator_price_per_hour / 3600
        metrics.PROMPT_TOKENS.labels(name, mode).inc(len(prep.prompt_ids))
        metrics.DECODED_TOKENS.labels(name, mode).inc(decoded)
        metrics.DELIVERED_TOKENS.labels(name, mode).inc(delivered)
        metrics.CANDIDATES.labels(name).observe(prep.best_of)
        metrics.ENGINE_SECONDS.labels(name, mode).inc(lease.engine_seconds)
        metrics.COST.labels(name, mode).inc(cost)
        if ranked is not None:
            metrics.REWARD_TOKENS.labels(name).inc(reward_tokens)
            best = ranked.rewards[ranked.order[0]]
            metrics.CHOSEN_REWARD.labels(name).observe(best)
            metrics.REWARD_GAP.labels(name).observe(best - sum(ranked.rewards) / len(ranked.rewards))
        prompt_len = len(prep.prompt_ids)
        return Usage(
            prompt_tokens=prompt_len,
            completion_tokens=decoded,
            total_tokens=prompt_len + decoded,
            bonserve=UsageBreakdown(
                candidates=prep.best_of,
                delivered_tokens=delivered,
                decoded_tokens=decoded,
                reward_model_tokens=reward_tokens,
                engine_seconds=lease.engine_seconds,
                estimated_cost_usd=cost,
            ),
        )

    @staticmethod
    def _first_token(prep: PreparedRequest) -> None:
        metrics.TTFT.labels(prep.model.name, prep.mode).observe(time.perf_counter() - prep.arrived)

    def _usage_of(
        self,
        prep: PreparedRequest,
        outputs: Sequence[Any],
        chosen: Sequence[tuple[Any, float | None]],
        ranked: Ranked | None,
        lease: Lease,
    ) -> Usage:
        return self._account(
            prep,
            sum(len(o.token_ids) for o in outputs),
            sum(len(o.token_ids) for o, _ in chosen),
            ranked,
            lease,
        )


def select(outputs: Sequence[Any], ranked: Ranked | None, n: int) -> list[tuple[Any, float | None]]:
    """The n choices to return with their rewards: best first under BoN, else as sampled."""
    if ranked is None:
        return [(o, None) for o in outputs[:n]]
    return [(outputs[i], ranked.rewards[i]) for i in ranked.order[:n]]


def sse(payload: Any) -> str:
    if hasattr(payload, "model_dump_json"):
        return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"
    import json

    return f"data: {json.dumps(payload)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def held(lines: AsyncIterator[str], model: ServedModel) -> AsyncIterator[str]:
    """Count a stream as in flight on `model` from now until it ends (see model.drain)."""
    model.in_flight += 1

    async def run() -> AsyncIterator[str]:
        try:
            async for line in lines:
                yield line
        finally:
            model.in_flight -= 1

    return run()


async def guarded_stream(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """Errors after the 200 header has gone out travel in the stream as an error event."""
    try:
        async for line in lines:
            yield line
    except APIError as exc:
        yield sse(exc.envelope())
        yield SSE_DONE


# --------------------------------------------------------------------------- chat


def _structured_outputs(req: ChatCompletionRequest) -> Any:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if fmt.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    assert fmt.json_schema is not None
    return StructuredOutputsParams(json=fmt.json_schema.schema_ or {"type": "object"})


def _chat_logprobs(output: Any, top_n: int) -> ChoiceLogprobs | None:
    if output.logprobs is None:
        return None
    content = []
    for token_id, entries in zip(output.token_ids, output.logprobs, strict=False):
        chosen = entries[token_id]
        text = chosen.decoded_token or ""
        ranked = sorted(entries.values(), key=lambda lp: lp.rank or 0)[:top_n]
        content.append(
            TokenLogprob(
                token=text,
                logprob=max(chosen.logprob, -9999.0),
                bytes=list(text.encode()),
                top_logprobs=[
                    TopLogprob(
                        token=lp.decoded_token or "",
                        logprob=max(lp.logprob, -9999.0),
                        bytes=list((lp.decoded_token or "").encode()),
                    )
                    for lp in ranked
                ],
            )
        )
    return ChoiceLogprobs(content=content)


class ChatServing(BaseServing):
    def _prepare(self, req: ChatCompletionRequest) -> PreparedRequest:
        model = self.router.resolve(req.model)
        candidates = self._candidates(req, model)
        self.admission.check()
        engine = self._engine_for(model)
        assert model.engine.info is not None
        tokenizer = engine.get_tokenizer()
        messages = [m.as_dict() for m in req.messages]
        try:
            prompt_ids = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        except Exception as exc:  # template errors are caused by the conversation's shape
            raise bad_request(f"the chat template rejected these messages: {exc}", "messages") from exc
        max_tokens = self._max_tokens(
            req.requested_max_tokens, len(prompt_ids), model.engine.info.max_model_len
        )
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = self._sampling_params(
            req,
            candidates=candidates,
            max_tokens=max_tokens,
            logprobs=logprobs,
            delta=req.stream or candidates > req.n,
            vocab_size=len(tokenizer),
            structured=_structured_outputs(req),
        )
        return PreparedRequest(
            model, engine, list(prompt_ids), params, req.n, new_id("chatcmpl"), messages=messages
        )

    async def create(self, req: ChatCompletionRequest) -> ChatCompletionResponse | AsyncIterator[str]:
        prep = self._prepare(req)
        if req.stream and prep.best_of == prep.n:
            return guarded_stream(held(self._stream(req, prep), prep.model))
        with prep.model.hold():
            outputs, ranked, lease = await self._generate_ranked(prep)
        response = self._response(req, prep, outputs, ranked, lease)
        if req.stream:
            return guarded_stream(self._replay(req, prep, response))
        self._first_token(prep)
        return response

    def _response(
        self,
        req: ChatCompletionRequest,
        prep: PreparedRequest,
        outputs: Sequence[Any],
        ranked: Ranked | None,
        lease: Lease,
    ) -> ChatCompletionResponse:
        top_n = req.top_logprobs or 0
        chosen = select(outputs, ranked, prep.n)
        choices = [
            ChatChoice(
                index=i,
                message=ResponseMessage(content=o.text),
                logprobs=_chat_logprobs(o, top_n) if req.logprobs else None,
                finish_reason=o.finish_reason or "stop",
                reward=reward,
            )
            for i, (o, reward) in enumerate(chosen)
        ]
        return ChatCompletionResponse(
            id=prep.request_id,
            created=now(),
            model=prep.model.name,
            choices=choices,
            usage=self._usage_of(prep, outputs, chosen, ranked, lease),
        )

    async def _replay(
        self, req: ChatCompletionRequest, prep: PreparedRequest, response: ChatCompletionResponse
    ) -> AsyncIterator[str]:
        """Stream a finished Best-of-N response: each selected choice as role, content and
        finish chunks (the winner is only known once every candidate is scored)."""

        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
            return sse(
                ChatCompletionChunk(
                    id=response.id,
                    created=response.created,
                    model=response.model,
                    choices=choices,
                    usage=usage,
                )
            )

        self._first_token(prep)
        for c in response.choices:
            yield chunk([ChatChunkChoice(index=c.index, delta=DeltaMessage(role="assistant", content=""))])
            yield chunk(
                [
                    ChatChunkChoice(
                        index=c.index, delta=DeltaMessage(content=c.message.content), logprobs=c.logprobs
                    )
                ]
            )
            yield chunk(
                [
                    ChatChunkChoice(
                        index=c.index, delta=DeltaMessage(), finish_reason=c.finish_reason, reward=c.reward
                    )
                ]
            )
        if req.stream_options and req.stream_options.include_usage:
            yield chunk([], usage=response.usage)
        yield SSE_DONE

    async def _stream(self, req: ChatCompletionRequest, prep: PreparedRequest) -> AsyncIterator[str]:
        created = now()
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        tally = StreamTally()

        def chunk(choices: list[ChatChunkChoice]) -> str:
            return sse(
                ChatCompletionChunk(
                    id=prep.request_id, created=created, model=prep.model.name, choices=choices
                )
            )

        for i in range(prep.n):
            yield chunk([ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
        async for o in self._increments(prep, tally):
            yield chunk(
                [
                    ChatChunkChoice(
                        index=o.index,
                        delta=DeltaMessage(content=o.text or None),
                        logprobs=_chat_logprobs(o, req.top_logprobs or 0) if req.logprobs else None,
                        finish_reason=o.finish_reason,
                    )
                ]
            )
        usage = self._account(prep, tally.tokens, tally.tokens, None, tally.lease)
        if include_usage:
            yield sse(
                ChatCompletionChunk(
                    id=prep.request_id, created=created, model=prep.model.name, choices=[], usage=usage
                )
            )
        yield SSE_DONE
