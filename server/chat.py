"""`/v1/chat/completions`: chat templates, structured output, per-token logprobs, streaming,
and streamed Best-of-N (the winner replayed as chunks once every candidate is scored)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from server.admission import Lease
from server.bon import Ranked, select
from server.errors import bad_request
from server.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceLogprobs,
    DeltaMessage,
    ResponseMessage,
    TokenLogprob,
    TopLogprob,
    Usage,
    new_id,
    now,
)
from server.serving import (
    SSE_DONE,
    BaseServing,
    PreparedRequest,
    Resolved,
    StreamTally,
    guarded_stream,
    held,
    listed_candidates,
    sse,
)


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
    def _prepare(self, req: ChatCompletionRequest, resolved: Resolved) -> PreparedRequest:
        model, candidates = resolved.model, resolved.best_of
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
        if logprobs is None and resolved.selector == "logprob" and candidates > req.n:
            logprobs = 0  # the sampled tokens' own logprobs, for ranking (returned only if asked)
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
            model,
            engine,
            list(prompt_ids),
            params,
            req.n,
            new_id("chatcmpl"),
            messages=messages,
            selector=resolved.selector,
            pairing=resolved.pairing,
            scorer=resolved.scorer,
            pruning=resolved.pruning,
        )

    async def create(
        self, req: ChatCompletionRequest, resolved: Resolved
    ) -> ChatCompletionResponse | AsyncIterator[str]:
        """`resolved` is `self.resolve(req)`, done once by the caller."""
        prep = self._prepare(req, resolved)
        if req.stream and prep.best_of == prep.n:
            return guarded_stream(held(self._stream(req, prep), prep.model))
        if req.stream:  # Best-of-N: keep-alives while candidates decode, then the winners

            def replay(outputs: list[Any], ranked: Ranked | None, lease: Lease) -> AsyncIterator[str]:
                return self._replay(req, prep, self._response(req, prep, outputs, ranked, lease))

            return guarded_stream(self._bon_events(prep, replay))
        with prep.model.hold():
            outputs, ranked, lease = await self._generate_ranked(prep)
        response = self._response(req, prep, outputs, ranked, lease)
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
            candidates=(listed_candidates(prep, outputs, ranked) if req.return_candidates else None),
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
        # continuous usage stats: decoding is over, so the usage so far is the final one
        running = response.usage if req.stream_options and req.stream_options.continuous() else None
        for c in response.choices:
            role = ChatChunkChoice(index=c.index, delta=DeltaMessage(role="assistant", content=""))
            yield chunk([role], running)
            yield chunk(
                [
                    ChatChunkChoice(
                        index=c.index, delta=DeltaMessage(content=c.message.content), logprobs=c.logprobs
                    )
                ],
                running,
            )
            yield chunk(
                [
                    ChatChunkChoice(
                        index=c.index, delta=DeltaMessage(), finish_reason=c.finish_reason, reward=c.reward
                    )
                ],
                running,
            )
        if req.stream_options and req.stream_options.include_usage:
            yield chunk([], usage=response.usage)
        yield SSE_DONE

    async def _stream(self, req: ChatCompletionRequest, prep: PreparedRequest) -> AsyncIterator[str]:
        created = now()
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        continuous = bool(req.stream_options and req.stream_options.continuous())
        tally = StreamTally()

        def chunk(choices: list[ChatChunkChoice]) -> str:
            return sse(
                ChatCompletionChunk(
                    id=prep.request_id,
                    created=created,
                    model=prep.model.name,
                    choices=choices,
                    usage=self._usage_so_far(prep, tally) if continuous else None,
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
