"""Legacy `/v1/completions`: raw prompts (text or token ids), echo, per-token logprobs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from server.bon import select
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
        if req.stream and candidates > req.n:
            raise bad_request(
                "streaming with best_of > n is supported on /v1/chat/completions only", "stream"
            )
        params = self._sampling_params(
            req,
            candidates=candidates,
            max_tokens=max_tokens,
            logprobs=req.logprobs,
            delta=req.stream or candidates > req.n,
            vocab_size=len(tokenizer),
        )
        return PreparedRequest(
            model, engine, prompt_ids, params, req.n, new_id("cmpl"), prompt_text=prompt_text
        )

    async def create(
        self, req: CompletionRequest, resolved: Resolved
    ) -> CompletionResponse | AsyncIterator[str]:
        """`resolved` is `self.resolve(req)`, done once by the caller."""
        prep = self._prepare(req, resolved)
        if req.stream:
            return guarded_stream(held(self._stream(req, prep), prep.model))
        with prep.model.hold():
            outputs, ranked, lease = await self._generate_ranked(prep)
        self._first_token(prep)
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
        )

    async def _stream(self, req: CompletionRequest, prep: PreparedRequest) -> AsyncIterator[str]:
        created = now()
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        tally = StreamTally()
        async for o in self._increments(prep, tally):
            yield sse(
                CompletionResponse(
                    id=prep.request_id,
                    created=created,
                    model=prep.model.name,
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
