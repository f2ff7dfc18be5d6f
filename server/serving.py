"""Request handling that knows nothing of HTTP, the part chat and completions share:
resolve the model and candidate count, validate against limits, build sampling parameters,
run the engine (Best-of-N in server/bon.py), account usage, and the SSE helpers.

Routes call `serving.resolve(req)` once, then `ChatServing.create` (server/chat.py) or
`CompletionServing.create` (server/completions.py); each returns a response model or an
async iterator of SSE lines. Every failure is an `APIError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from server import metrics
from server.admission import Admission, Lease
from server.bon import (
    FINISHED,
    BestOfN,
    Candidate,
    Pruning,
    Ranked,
    candidate_seed,
    resume_seed,
    sample_pruned,
    scored_candidates,
    survivors,
)
from server.config import Settings
from server.engines import EngineUnavailable
from server.errors import APIError, bad_request, unavailable
from server.models import ModelRouter, ServedModel
from server.protocol import SamplingFields, ScoredCandidate, Usage, UsageBreakdown
from server.rerankers import Pairing, Rerankers
from server.reward import RewardScorer
from server.selectors import needs_reward

logger = logging.getLogger("bonserve.serving")


# --------------------------------------------------------------------------- engine calls


@dataclass
class StreamTally:
    """What a streamed request used, filled in while it streams."""

    tokens: int = 0
    first_token_seen: bool = False
    lease: Lease = field(default_factory=Lease)


@dataclass(frozen=True)
class Resolved:
    """A request's served model, candidate count, selector and reward model, decided once
    when it arrives (an alias switched or re-paired later does not move it) and used by the
    access log and the engine."""

    model: ServedModel
    n: int  # choices returned
    best_of: int  # candidates sampled
    selector: str = "reward"  # bon_selector
    pairing: Pairing | None = None  # what reranks this model (server/rerankers.py)
    scorer: RewardScorer | None = None  # set when the candidates are scored
    pruning: Pruning = field(default_factory=Pruning)  # bon_prune_at / bon_reward_threshold (off: empty)

    @property
    def mode(self) -> str:
        """ "bon" or "single", the metric label."""
        return "bon" if self.best_of > self.n else "single"


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
    selector: str = "reward"
    pairing: Pairing | None = None
    scorer: RewardScorer | None = None  # the policy's reward model, when the selector scores
    pruning: Pruning = field(default_factory=Pruning)
    dropped: list[Candidate] = field(default_factory=list)  # pruned or stopped: decoded, never choices
    resumed_prompt_tokens: int = 0  # "hold" pruning: prompt tokens prefilled again at resumes

    @property
    def best_of(self) -> int:
        return int(self.params.n)

    @property
    def mode(self) -> str:
        return "bon" if self.best_of > self.n else "single"


def _engine_error(model: ServedModel, exc: BaseException) -> APIError:
    """Map vLLM's request errors to client-visible ones (engine death is the engine
    wrapper's: `ManagedEngine.guard`)."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError

    if isinstance(exc, GracefulHTTPError):
        return APIError(int(exc.http_status), exc.message, type="server_error")
    if isinstance(exc, VLLMClientError | ValueError):  # vLLM's request validation
        return bad_request(str(exc))
    logger.exception("engine error for %s", model.name, exc_info=exc)
    return APIError(500, f"engine error: {type(exc).__name__}", type="server_error")


async def run_to_completion(prep: PreparedRequest) -> Any:
    """Run a request with FINAL_ONLY output and check every candidate arrived."""
    final = None
    async for out in stream_deltas(prep):
        final = out
    if final is None or len(final.outputs) != prep.params.n:
        got = 0 if final is None else len(final.outputs)
        raise APIError(500, f"engine returned {got} of {prep.params.n} candidates", type="server_error")
    return final


async def stream_deltas(prep: PreparedRequest) -> AsyncIterator[Any]:
    """The engine's outputs for `prep` (increments or one final output, per params)."""
    subject = f"the engine serving '{prep.model.name}'"
    await prep.model.weights_loaded.wait()  # set, unless an in-place swap is loading them
    try:
        with prep.model.engine.guard(prep.engine, subject):
            async for out in prep.engine.generate(
                {"prompt_token_ids": prep.prompt_ids},
                prep.params,
                prep.request_id,
                lora_request=prep.model.lora,
            ):
                yield out
    except (asyncio.CancelledError, GeneratorExit, APIError):
        raise
    except Exception as exc:
        raise _engine_error(prep.model, exc) from exc


# --------------------------------------------------------------------------- shared logic


class BaseServing:
    def __init__(
        self,
        settings: Settings,
        router: ModelRouter,
        admission: Admission,
        rerank: Rerankers | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.admission = admission
        self.rerank = rerank or Rerankers()

    def _engine_for(self, model: ServedModel) -> Any:
        try:
            return model.engine.require()
        except EngineUnavailable as exc:
            raise unavailable(str(exc)) from exc

    def resolve(self, req: SamplingFields) -> Resolved:
        """The served model, candidate count, selector and reward model of `req`, or the
        APIError that refuses it."""
        model = self.router.resolve(req.model)
        pairing = self.rerank.lookup(req.model, model, alias=req.model != model.name)
        selector = req.bon_selector or "reward"
        best_of = self._candidates(req, model, pairing, selector)
        scorer = None
        if best_of > req.n and needs_reward(selector):
            scorer = self.rerank.scorer(pairing.reward_model)
            if scorer is None:
                raise unavailable(f"the reward model '{pairing.reward_model}' of '{req.model}' is not loaded")
        else:
            _refuse_pruning(req, best_of, selector)
        pruning = self._pruning(req, model) if scorer is not None else Pruning()
        return Resolved(model, req.n, best_of, selector, pairing, scorer, pruning)

    def _pruning(self, req: SamplingFields, model: ServedModel) -> Pruning:
        """The request's pruning schedule and early stop, else the model's server defaults. A
        field sent as null (or bon_prune_at []) turns that default off for the request: only an
        absent field takes the default (`model_fields_set` tells the two apart)."""
        sent = req.model_fields_set
        default = self.settings.bon_prune_for(model.name)
        if "bon_prune_at" in sent:
            at: tuple[int, ...] = tuple(req.bon_prune_at or ())
        else:
            at = default[0] if default else ()
        if req.bon_prune_fraction is not None and not at:
            # it says how many to prune at each checkpoint; without one it would do nothing
            raise bad_request(
                "bon_prune_fraction needs bon_prune_at (the token counts at which to prune), or a "
                f"server default schedule for '{model.name}' (--default-bon-prune)",
                "bon_prune_fraction",
            )
        if req.bon_prune_margin is not None and not at:
            raise bad_request(
                "bon_prune_margin needs bon_prune_at (the token counts at which to prune), or a "
                f"server default schedule for '{model.name}' (--default-bon-prune)",
                "bon_prune_margin",
            )
        if req.bon_prune_fraction is not None:
            fraction = req.bon_prune_fraction
        else:
            fraction = default[1] if default else 0.5
        if "bon_prune_margin" in sent:
            margin = req.bon_prune_margin
        else:
            margin = self.settings.bon_prune_margin_for(model.name)
        if at and fraction == 0 and margin is None:
            raise bad_request(
                "bon_prune_fraction 0 prunes nothing by itself: send a bon_prune_margin with it, "
                "or a fraction above 0",
                "bon_prune_fraction",
            )
        if "bon_reward_threshold" in sent:
            threshold = req.bon_reward_threshold
        else:
            threshold = self.settings.bon_reward_threshold_for(model.name)
        mode = req.bon_prune_mode or self.settings.bon_prune_mode
        if at and mode == "hold":
            _refuse_hold(req)
        return Pruning(at, fraction, threshold, mode, margin)

    def _candidates(self, req: SamplingFields, model: ServedModel, pairing: Pairing, selector: str) -> int:
        """How many candidates to sample: the request's best_of, else the model's default
        (which applies only where the selector can rank: a usable reward model, or a selector
        that needs none)."""
        if req.n > self.settings.max_n:
            raise bad_request(f"n={req.n} exceeds this server's limit of {self.settings.max_n}", "n")
        can_rank = pairing.usable or not needs_reward(selector)
        if req.best_of is not None:
            if req.best_of > self.settings.max_best_of:
                raise bad_request(
                    f"best_of={req.best_of} exceeds this server's limit of {self.settings.max_best_of}",
                    "best_of",
                )
            if req.best_of > req.n and not can_rank:
                raise _cannot_rank(req.model, pairing, selector)
            return req.best_of
        # A server default never turns a greedy request into Best-of-N: its candidates would
        # all be the same text, and vLLM refuses n > 1 at temperature 0.
        greedy = req.temperature == 0
        default = self.settings.best_of_for(model.name) if can_rank and not greedy else 1
        return max(req.n, default)

    async def _generate_ranked(self, prep: PreparedRequest) -> tuple[list[Any], Ranked | None, Lease]:
        """Run the request; with best_of > n, rerank. Returns (all candidates, ranking, lease)."""
        async with self.admission.slot(prep.model.name, prep.mode) as lease, self._deadline():
            if prep.best_of == prep.n:
                final = await run_to_completion(prep)
                return list(final.outputs), None, lease
            # `resolve` gave a scorer to every request whose selector needs one
            bon = BestOfN(prep.scorer, self.settings.length_penalty, prep.selector)
            if prep.scorer is not None and prep.pruning.active:
                with prep.scorer.hold():
                    start = lambda c, upto: stream_deltas(_one(prep, c, upto))  # noqa: E731
                    everyone = await sample_pruned(bon, prep, start, prep.pruning)
                outputs = survivors(everyone)
                prep.dropped = [c for c in everyone if c.outcome != FINISHED]
                prep.resumed_prompt_tokens = sum(c.resumed_prompt_tokens for c in everyone)
                ranked = bon.rank(outputs)
            elif prep.scorer is not None:
                with prep.scorer.hold():  # a reward-model swap waits for it before freeing the engine
                    outputs, ranked = await bon.run(prep, stream_deltas(prep))
            else:  # nothing to score: assemble the candidates, then rank them
                outputs = await assemble(prep, stream_deltas(prep))
                ranked = bon.rank(outputs)
        return list(outputs), ranked, lease

    async def _bon_events(
        self, prep: PreparedRequest, replay: Callable[[list[Any], Ranked | None, Lease], AsyncIterator[str]]
    ) -> AsyncIterator[str]:
        """Streamed Best-of-N: the 200 and its headers go out at once, then a keep-alive
        every `sse_keepalive_s` while the candidates decode and are scored, then `replay`'s
        events (the winners as chunks: they are only known once every candidate is scored).
        An error in between arrives as the stream's error event (see `guarded_stream`); a
        client that leaves cancels the work, which aborts the engine request."""

        async def work() -> tuple[list[Any], Ranked | None, Lease]:
            with prep.model.hold():
                return await self._generate_ranked(prep)

        task = asyncio.create_task(work())
        try:
            while not task.done():
                done, _ = await asyncio.wait({task}, timeout=self.settings.sse_keepalive_s)
                if not done:
                    yield SSE_KEEPALIVE
            outputs, ranked, lease = task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        async for line in replay(outputs, ranked, lease):
            yield line

    async def _increments(self, prep: PreparedRequest, tally: StreamTally) -> AsyncIterator[Any]:
        """A streamed request's increments that carry text or a finish reason, inside an
        admission slot and the deadline; counts tokens and times the first one."""
        async with self.admission.slot(prep.model.name, prep.mode) as tally.lease, self._deadline():
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
        if req.min_tokens > max_tokens:
            raise bad_request(f"min_tokens={req.min_tokens} exceeds max_tokens={max_tokens}", "min_tokens")
        if req.stop_token_ids and any(not 0 <= t < vocab_size for t in req.stop_token_ids):
            raise bad_request("stop_token_ids has token ids outside the vocabulary", "stop_token_ids")
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
                stop_token_ids=req.stop_token_ids,
                ignore_eos=req.ignore_eos,
                min_tokens=req.min_tokens,
                skip_special_tokens=req.skip_special_tokens,
                spaces_between_special_tokens=req.spaces_between_special_tokens,
                include_stop_str_in_output=req.include_stop_str_in_output,
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
        reward_tokens = (ranked.reward_tokens if ranked else 0) + sum(c.reward_tokens for c in prep.dropped)
        scored = ranked is not None and prep.scorer is not None
        verdict = prep.pairing.verdict if scored and prep.pairing is not None else None
        cost = lease.engine_seconds * self.settings.accelerator_price_per_hour / 3600
        metrics.PROMPT_TOKENS.labels(name, mode).inc(len(prep.prompt_ids))
        metrics.DECODED_TOKENS.labels(name, mode).inc(decoded)
        metrics.DELIVERED_TOKENS.labels(name, mode).inc(delivered)
        metrics.CANDIDATES.labels(name).observe(prep.best_of)
        outcomes = _outcomes(prep, ranked)
        for outcome, count in (outcomes or {}).items():
            metrics.CANDIDATE_OUTCOMES.labels(name, outcome).inc(count)
        if outcomes is not None:
            metrics.RESUMED_PROMPT_TOKENS.labels(name).inc(prep.resumed_prompt_tokens)
        # engine seconds and cost are counted by Admission.slot, failures included
        rewards = [r for r in ranked.rewards if r is not None] if ranked is not None else []
        if ranked is not None and len(rewards) == len(ranked.rewards):
            metrics.REWARD_TOKENS.labels(name).inc(reward_tokens)
            best = rewards[ranked.order[0]]
            metrics.CHOSEN_REWARD.labels(name).observe(best)
            metrics.REWARD_GAP.labels(name).observe(best - sum(rewards) / len(rewards))
        prompt_len = len(prep.prompt_ids)
        return Usage(
            prompt_tokens=prompt_len,
            completion_tokens=decoded,
            total_tokens=prompt_len + decoded,
            bonserve=UsageBreakdown(
                candidates=prep.best_of,
                candidates_finished=outcomes["finished"] if outcomes else None,
                candidates_pruned=outcomes["pruned"] if outcomes else None,
                candidates_stopped=outcomes["stopped"] if outcomes else None,
                resumed_prompt_tokens=prep.resumed_prompt_tokens if outcomes else None,
                delivered_tokens=delivered,
                decoded_tokens=decoded,
                reward_model_tokens=reward_tokens,
                selector=ranked.selector if ranked is not None else None,
                reward_model=prep.scorer.name if scored and prep.scorer is not None else None,
                rerank_allowed=verdict.allowed if verdict is not None else None,
                engine_seconds=lease.engine_seconds,
                estimated_cost_usd=cost,
            ),
        )

    @staticmethod
    def _usage_so_far(prep: PreparedRequest, tally: StreamTally) -> Usage:
        """vLLM's continuous usage stats: the usage of a stream up to this chunk."""
        prompt = len(prep.prompt_ids)
        return Usage(prompt_tokens=prompt, completion_tokens=tally.tokens, total_tokens=prompt + tally.tokens)

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
            sum(len(o.token_ids) for o in [*outputs, *prep.dropped]),
            sum(len(o.token_ids) for o, _ in chosen),
            ranked,
            lease,
        )


def _cannot_rank(name: str, pairing: Pairing, selector: str) -> APIError:
    """Why best_of > n cannot be ranked with `selector` for `name` (a 400, param best_of)."""
    other = "or send bon_selector 'majority' or 'logprob', which need none"
    if pairing.reward_model is None:
        return bad_request(
            f"best_of > n with bon_selector '{selector}' needs a reward model to rerank candidates; "
            f"'{name}' has none (start the server with --reward-model or --reward-models, or promote "
            f"it with a reward_model), {other}",
            "best_of",
        )
    reason = pairing.verdict.reason if pairing.verdict is not None else ""
    return bad_request(
        f"'{name}' is paired with reward model '{pairing.reward_model}', which the rerank gate "
        f"refuses: {reason}. Pair another (promotion reward_model), {other}",
        "best_of",
        "unhelpful_reward_model",
    )


_PRUNING_FIELDS = ("bon_prune_at", "bon_prune_fraction", "bon_prune_margin", "bon_reward_threshold")


def _refuse_pruning(req: SamplingFields, best_of: int, selector: str) -> None:
    """A 400 for a pruning or threshold field where nothing is ranked by reward (best_of == n,
    or a selector without a reward model): it could not apply, and silently serving the request
    without it would hide that. A field that only turns them off (null, bon_prune_at []) is
    fine, and the server's defaults simply do not apply there."""
    for name in _PRUNING_FIELDS:
        value = getattr(req, name)
        if value is None or value == []:
            continue
        raise bad_request(
            f"{name} needs best_of > n and a reward-based bon_selector ('reward' or "
            f"'reward+majority'); this request has best_of={best_of}, n={req.n}, "
            f"bon_selector '{selector}'",
            name,
        )


def _refuse_hold(req: SamplingFields) -> None:
    """A 400 for sampling state that "hold" pruning would lose when a candidate resumes as a new
    engine request: a `stop` string could span the resume point, penalties count only the
    tokens of the engine request, and structured output's grammar state starts over."""
    fmt = getattr(req, "response_format", None)  # chat only
    lost = {
        "stop": bool(req.stop),
        "frequency_penalty": req.frequency_penalty != 0,
        "presence_penalty": req.presence_penalty != 0,
        "response_format": fmt is not None and fmt.type != "text",
    }
    for name, used in lost.items():
        if used:
            raise bad_request(
                f"{name} cannot be combined with bon_prune_mode 'hold' (the survivors of a checkpoint "
                "resume as new engine requests, which would not carry it over); send "
                "bon_prune_mode 'overlap' or drop the pruning",
                name,
            )


def _one(prep: PreparedRequest, c: Candidate, upto: int | None) -> PreparedRequest:
    """Candidate `c` of a pruned Best-of-N request as its own engine request (n=1, the seed
    vLLM would give that child), so it can be aborted alone; prefix caching shares the prompt.
    A candidate with tokens already ("hold" pruning resumes it) continues from them: they join
    the prompt, max_tokens and min_tokens shrink by them, and the segment has its own seed.
    `upto`: end this segment once the candidate has that many tokens (None: at its end)."""
    from copy import copy
    from dataclasses import replace

    params = copy(prep.params)
    params.n = 1
    done = len(c.token_ids)
    if done:
        params.seed = resume_seed(prep.params.seed, c.index, c.segments)
        params.min_tokens = max(0, params.min_tokens - done)
    else:
        params.seed = candidate_seed(prep.params.seed, c.index)
    end = prep.params.max_tokens if upto is None else upto
    if end is not None:
        params.max_tokens = end - done
    return replace(
        prep,
        prompt_ids=[*prep.prompt_ids, *c.token_ids],
        params=params,
        request_id=f"{prep.request_id}-{c.index}" + (f"-r{c.segments}" if done else ""),
        dropped=[],
    )


def _outcomes(prep: PreparedRequest, ranked: Ranked | None) -> dict[str, int] | None:
    """Candidates by outcome under pruning / early stop (None when neither was on)."""
    if ranked is None or not prep.pruning.active:
        return None
    counts = {"finished": len(ranked.order), "pruned": 0, "stopped": 0}
    for c in prep.dropped:
        counts[c.outcome or "stopped"] += 1
    return counts


def listed_candidates(
    prep: PreparedRequest, outputs: Sequence[Any], ranked: Ranked | None
) -> list[ScoredCandidate]:
    """`return_candidates`: the ranked candidates, then (under pruning / adaptive N) the pruned
    and stopped ones; each with its engine index (the ranking indexes only the survivors)."""
    listed = scored_candidates(outputs, ranked, prep.n)
    if prep.pruning.active and ranked is not None:
        for entry in listed:
            entry.outcome = FINISHED
            entry.index = outputs[entry.index].index
        listed += dropped_candidates(prep)
    return listed


def dropped_candidates(prep: PreparedRequest) -> list[ScoredCandidate]:
    """`return_candidates` entries of the pruned and stopped candidates: never choices, ranked
    after every survivor, with their partial reward and outcome."""
    rank = prep.best_of - len(prep.dropped)
    return [
        ScoredCandidate(
            index=c.index,
            rank=rank + k,
            text=c.text,
            reward=None,
            score=None,
            finish_reason=c.finish_reason or "abort",
            completion_tokens=len(c.token_ids),
            choice_index=None,
            outcome=c.outcome,
            partial_reward=c.partial_reward,
            partial_text=c.partial_text if c.partial_reward is not None else None,
        )
        for k, c in enumerate(prep.dropped)
    ]


async def assemble(prep: PreparedRequest, deltas: AsyncIterator[Any]) -> list[Candidate]:
    """All candidates of `prep` from the engine's increments, unscored (selectors that need
    no reward model)."""
    candidates = [Candidate(i) for i in range(prep.best_of)]
    async for out in deltas:
        for delta in out.outputs:
            candidates[delta.index].extend(delta)
    unfinished = [c.index for c in candidates if not c.finished]
    if unfinished:
        raise APIError(
            500,
            f"engine finished {prep.best_of - len(unfinished)} of {prep.best_of} candidates",
            type="server_error",
        )
    return candidates


def sse(payload: Any) -> str:
    if hasattr(payload, "model_dump_json"):
        return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"
    import json

    return f"data: {json.dumps(payload)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
# Keep-alive: a blank line. SSE parsers ignore a blank line with no event pending, and proxies
# with an idle timeout see traffic. Not an SSE comment (': keep-alive'): `vllm bench serve`
# strips every network read before it splits events, so a comment glued itself to the next
# event and the bench dropped the whole stream ("Never received a valid chunk"); a read that
# is only whitespace it skips.
SSE_KEEPALIVE = "\n"


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
