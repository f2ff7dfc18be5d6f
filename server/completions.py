"""Legacy `/v1/completions`: raw prompts (text or token ids), echo, per-token logprobs, streaming,
and streamed Best-of-N (the winners replayed as chunks once every candidate is scored)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from server.admission import Lease
from server.bon import Ranked, select
from server.errors import bad_request
from server.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
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


def _completion_logprobs(output: Any, top_n: int, offset: int) -> CompletionLogprobs | None:
    if output.logprobs is None:
        return None
    result = CompletionLogprobs()
    for token_id, entries in zip(output.token_ids, output.logprobs, strict=False):
        chosen = entries[token_id]
        text = chosen.decoded_token or ""
        result.tokens.append(text)
        result.token_logprobs.append(max(chosen.logprob, -9999.0))
        ranked = sorted(entries.values(), key=lambda lp: lp.rank or 0)[: max(top_n, 1)]
        result.top_logprobs.append({lp.decoded_token or "": lp.logprob for lp in ranked})
        result.text_offset.append(offset)
        offset += len(text)
    return result


class CompletionServing(BaseServing):
    def _prepare(self, req: CompletionRequest, resolved: Resolved) -> PreparedRequest:
        model, candidates = resolved.model, resolved.best_of
        self.admission.check()
        if req.echo and req.stream:
            raise bad_request("echo is not supported with stream", "echo")
        engine = self._engine_for(model)
        assert model.engine.info is not None
        tokenizer = engine.get_tokenizer()
        prompt = (
            req.prompt[0] if isinstance(req.prompt, list) and isinstance(req.prompt[0], str) else req.prompt
        )
        if isinstance(prompt, str):
            prompt_ids = tokenizer.encode(prompt)
            prompt_text = prompt
        else:
            vocab = len(tokenizer)
            if any(not 0 <= t < vocab for t in prompt):
                raise bad_request("prompt has token ids outside the vocabulary", "prompt")
            prompt_ids = list(prompt)
            prompt_text = tokenizer.decode(prompt_ids)
        if not prompt_ids:
            raise bad_request("prompt must not be empty", "prompt")
        max_tokens = self._max_tokens(
            req.requested_max_tokens if req.max_tokens is not None else None,
            len(prompt_ids),
            model.engine.info.max_model_len,
        )
        logprobs = req.logprobs
        if logprobs is None and resolved.selector == "logprob" and candidates > req.n:
            logprobs = 0  # the sampled tokens' own logprobs, for ranking (returned only if asked)
        params = self._sampling_params(
            req,
            candidates=candidates,
            max_tokens=max_tokens,
            logprobs=logprobs,
            delta=req.stream or candidates > req.n,
            vocab_size=len(tokenizer),
        )
        return PreparedRequest(
            model,
            engine,
            prompt_ids,
            params,
            req.n,
            new_id("cmpl"),
            prompt_text=prompt_text,
            selector=resolved.selector,
            pairing=resolved.pairing,
            scorer=resolved.scorer,
            pruning=resolved.pruning,
        )

    async def create(
        self, req: CompletionRequest, resolved: Resolved
    ) -> CompletionResponse | AsyncIterator[str]:
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
        self._first_token(prep)
        return self._response(req, prep, outputs, ranked, lease)

    def _response(
        self,
        req: CompletionRequest,
        prep: PreparedRequest,
        outputs: Sequence[Any],
        ranked: Ranked | None,
        lease: Lease,
    ) -> CompletionResponse:
        chosen = select(outputs, ranked, prep.n)
        prefix = prep.prompt_text if req.echo else ""
        choices = [
            CompletionChoice(
                index=i,
                text=prefix + o.text,
                logprobs=_completion_logprobs(o, req.logprobs or 0, len(prefix))
                if req.logprobs is not None
                else None,
                finish_reason=o.finish_reason or "stop",
                reward=reward,
            )
            for i, (o, reward) in enumerate(chosen)
        ]
        return CompletionResponse(
            id=prep.request_id,
            created=now(),
            model=prep.model.name,
            choices=choices,
            usage=self._usage_of(prep, outputs, chosen, ranked, lease),
            candidates=(listed_candidates(prep, outputs, ranked) if req.return_candidates else None),
        )

    async def _replay(
        self, req: CompletionRequest, prep: PreparedRequest, response: CompletionResponse
    ) -> AsyncIterator[str]:
        """Stream a finished Best-of-N response: one chunk per selected choice (text, finish
        reason, reward), then the usage chunk if asked for."""
        self._first_token(prep)
        # continuous usage stats: decoding is over, so the usage so far is the final one
        running = response.usage if req.stream_options and req.stream_options.continuous() else None
        for c in response.choices:
            yield sse(response.model_copy(update={"choices": [c], "usage": running}))
        if req.stream_options and req.stream_options.include_usage:
            yield sse(response.model_copy(update={"choices": []}))
        yield SSE_DONE

    async def _stream(self, req: CompletionRequest, prep: PreparedRequest) -> AsyncIterator[str]:
        created = now()
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        continuous = bool(req.stream_options and req.stream_options.continuous())
        tally = StreamTally()
        async for o in self._increments(prep, tally):
            yield sse(
                CompletionResponse(
                    id=prep.request_id,
                    created=created,
                    model=prep.model.name,
                    usage=self._usage_so_far(prep, tally) if continuous else None,
                    choices=[
                        CompletionChoice(
                            index=o.index,
                            text=o.text,
                            logprobs=_completion_logprobs(o, req.logprobs or 0, 0)
                            if req.logprobs is not None
                            else None,
                            finish_reason=o.finish_reason,
                        )
                    ],
                )
            )
        usage = self._account(prep, tally.tokens, tally.tokens, None, tally.lease)
        if include_usage:
            yield sse(
                CompletionResponse(
                    id=prep.request_id,
                    created=created,
                    model=prep.model.name,
                    choices=[],
                    usage=usage,
                )
            )
        yield SSE_DONE
