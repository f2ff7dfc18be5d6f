"""Best-of-N: sample more candidates than the client asked for and return the ones the reward
model ranks highest.

A request asks for `n` choices (returned) and `best_of` candidates (sampled; the request's
`best_of`, else the server's default for that model, never fewer than `n`). With
`best_of > n` the policy engine samples all candidates for the prompt in one engine request,
the co-located reward model (server/reward.py) scores each one, and the `n` best return,
best first, each with its `reward`. With `best_of == n` nothing is scored and the choices
return as sampled; that path never reaches this module.

The phases, in the order a request runs them, one method of `BestOfN` each:

1. `sample_and_score` - stream the engine's increments, assemble one `Candidate` per
   index, and start a candidate's scoring (`score`) the moment it finishes, while the others
   are still decoding, so only the last candidate's scoring adds to the latency.
2. `score` - the reward of one finished candidate: the conversation with the candidate as
   the last assistant turn, through the reward model's chat template (what TRL's
   RewardTrainer trains on). A /v1/completions prompt has no turns: it is scored as the one
   user turn of that conversation, so both endpoints give the reward model one input format.
3. `rank` - order by the request's `bon_selector`, best first (server/selectors.py). The
   default, `reward`, orders by reward (`rank_candidates`): a candidate cut by max_tokens
   (finish_reason "length") has `length_penalty` subtracted; ties go to the lower index, so
   the order is deterministic. `majority` and `logprob` need no reward model: their
   candidates are assembled unscored (server/serving.py) and ranked here all the same.
4. `select` - the first `n` of that order, each with the reward that ranked it (penalty
   included), so a client can re-check the order from the rewards it gets.

With `return_candidates`, `scored_candidates` reports every candidate in that order beside
the choices (text, reward, finish reason, tokens, rank, the choice it became).

Usage bills every decoded token of every candidate as completion_tokens (as OpenAI billed
legacy best_of) and adds the tokens the reward model read as
`usage.bonserve.reward_model_tokens` (server/serving.py, `BaseServing._account`).

Pruning and adaptive N (`sample_pruned`, off by default; request fields `bon_prune_at`,
`bon_prune_fraction`, `bon_reward_threshold`, else the model's server defaults): each
candidate decodes as its own engine request (n=1, seeded `seed + i`, the seed vLLM gives child
i of an n>1 request, so with nothing cut the candidates are the same), because vLLM v1 cannot
abort one child of an n>1 request alone (the children have internal ids, and the parent's
stream waits for every child). Once every running candidate has decoded a checkpoint's token
count, their partial answers are scored through the same template as a finished one, in one
reward-model call, and the lowest `fraction` of those still running are aborted by cancelling
their streams (vLLM aborts a request whose generator closes), never leaving fewer than `n`
survivors (PRUNED); a candidate that has finished is never pruned. With a margin
(`bon_prune_margin`), a checkpoint also aborts every running candidate whose partial reward is
more than the margin below the `n`-th best reward of the candidates already finished (as
ranked): once `n` answers are in hand, a continuation that already scores below them is not
worth decoding to its end. With a threshold, once `n`
finished candidates' rewards (the ranking value: length penalty applied) reach it the rest are
aborted (STOPPED). Only finished survivors are ranked; usage still bills every decoded token
and every token the reward model read. Before an abort the aborted candidates' streams get one
event-loop turn to hand over what the engine already delivered (so it is billed, and a
candidate whose last token had arrived finishes instead); tokens the engine had not delivered
when the abort was sent are never reported by vLLM's stream, so an aborted candidate's
completion_tokens may fall short by at most the engine step in flight (one token a step).

How a checkpoint waits for the reward model (`Pruning.mode`, request field `bon_prune_mode`):
- "hold": each candidate's engine request ends at the checkpoint (its max_tokens), so nothing
  decodes while the partial answers are scored; the survivors then resume as new engine
  requests whose prompt is the original prompt plus the candidate's tokens so far (prefix
  caching serves the prompt's KV from cache; the rest is prefilled, counted in
  `usage.bonserve.resumed_prompt_tokens`). A pruned candidate costs only its prefix. A resumed
  segment is seeded `resume_seed(seed, i, k)`, a fresh stream per segment, so a fixed seed
  still reproduces the request; the candidates are then not the ones an unpruned request
  samples. Sampling state that lives in the engine request is lost at a resume, so `stop`
  strings, frequency/presence penalties and structured output are refused with it (serving.py);
  `min_tokens` carries over as what is left of it.
- "overlap": the candidates decode on while their partial answers are scored, and the pruned
  ones are aborted mid-flight (what they decoded meanwhile is billed).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from server import metrics
from server.errors import APIError
from server.protocol import ScoredCandidate
from server.selectors import (
    SELECTORS,
    logprob_order,
    majority_order,
    mean_logprob,
    needs_reward,
    normalise_answer,
    vote_shares,
)

if TYPE_CHECKING:  # serving.py runs Best-of-N, so it imports this module, not the reverse
    from server.serving import PreparedRequest


class Scorer(Protocol):
    """What Best-of-N needs of the reward model (server.reward.RewardScorer)."""

    def conversation_ids(self, messages: list[dict[str, str]], response: str) -> list[int]: ...

    async def score(self, sequences: Sequence[list[int]], request_id: str) -> list[float]: ...


@dataclass
class Candidate:
    """One sampled completion, assembled from the engine's streamed increments (vLLM
    `CompletionOutput`s with DELTA output), and its reward once scored."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] | None = None
    finish_reason: str | None = None
    reward: float | None = None  # raw reward-model logit
    reward_tokens: int = 0  # tokens the reward model read to score it (partial answers included)
    outcome: str | None = None  # FINISHED, PRUNED or STOPPED once decided; None while decoding
    partial_reward: float | None = None  # reward of its partial answer at the last checkpoint
    partial_text: str = ""  # that partial answer
    partial_tokens: int = 0  # its length in tokens
    resumed_prompt_tokens: int = 0  # "hold" pruning: prompt tokens its resumed segments prefilled
    segments: int = 0  # engine requests it took ("hold": one per checkpoint it reached, plus one)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def extend(self, delta: Any) -> None:
        self.text += delta.text
        self.token_ids.extend(delta.token_ids)
        if delta.logprobs is not None:
            self.logprobs = (self.logprobs or []) + list(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason


@dataclass
class Ranked:
    """Candidates in the selector's order (best first), with what the ranking cost."""

    order: list[int]  # candidate indices, best first
    rewards: list[float | None]  # per candidate index: its reward, length penalty applied (None: unscored)
    reward_tokens: int
    selector: str = "reward"
    scores: list[float] | None = None  # per candidate: the selector's value (None: the rewards ranked)
    answers: list[str] | None = None  # per candidate: the normalised answer it voted for (majority)


def penalised(
    rewards: Sequence[float], finish_reasons: Sequence[str | None], length_penalty: float
) -> list[float]:
    """Rewards with `length_penalty` subtracted from candidates cut by max_tokens."""
    return [
        r - (length_penalty if f == "length" else 0.0) for r, f in zip(rewards, finish_reasons, strict=True)
    ]


def rank_candidates(
    rewards: Sequence[float], finish_reasons: Sequence[str | None], length_penalty: float
) -> list[int]:
    """Indices best-first by penalised reward; ties go to the lower candidate index, so the
    order is deterministic."""
    adjusted = penalised(rewards, finish_reasons, length_penalty)
    return sorted(range(len(adjusted)), key=lambda i: (-adjusted[i], i))


def select(outputs: Sequence[Any], ranked: Ranked | None, n: int) -> list[tuple[Any, float | None]]:
    """The n choices to return with their rewards: best first under Best-of-N (`ranked`),
    else as sampled (no ranking, no rewards)."""
    if ranked is None:
        return [(o, None) for o in outputs[:n]]
    return [(outputs[i], ranked.rewards[i]) for i in ranked.order[:n]]


def scored_candidates(outputs: Sequence[Any], ranked: Ranked | None, n: int) -> list[ScoredCandidate]:
    """Every candidate best first, with the value that ranked it and the choice it became
    (`return_candidates`); empty without a ranking (best_of == n: nothing was scored)."""
    if ranked is None:
        return []
    scores = ranked.scores if ranked.scores is not None else ranked.rewards
    return [
        ScoredCandidate(
            index=i,
            rank=rank,
            text=outputs[i].text,
            reward=ranked.rewards[i],
            score=_finite(scores[i]),
            answer=ranked.answers[i] if ranked.answers is not None else None,
            finish_reason=outputs[i].finish_reason or "stop",
            completion_tokens=len(outputs[i].token_ids),
            choice_index=rank if rank < n else None,
        )
        for rank, i in enumerate(ranked.order)
    ]


def _finite(value: float | None) -> float | None:
    """JSON has no infinity (the mean logprob of an empty candidate): report it as null."""
    return value if value is not None and math.isfinite(value) else None


class NoRewardModel:
    """The scorer of a request whose policy has no reward model. Never called: the selectors
    that run without one rank candidates that serving assembles unscored."""

    def conversation_ids(self, messages: list[dict[str, str]], response: str) -> list[int]:
        raise RuntimeError("this request's policy has no reward model")

    async def score(self, sequences: Sequence[list[int]], request_id: str) -> list[float]:
        raise RuntimeError("this request's policy has no reward model")


class BestOfN:
    """Runs phases 1-3 for one request; `select` (phase 4) is shared with the plain path."""

    def __init__(self, reward: Scorer | None, length_penalty: float = 0.0, selector: str = "reward") -> None:
        """One per request: `reward` is its policy's reward model (None: it has none, and only
        a selector that needs none may run), `selector` its `bon_selector`."""
        if selector not in SELECTORS:
            raise ValueError(f"unknown Best-of-N selector {selector!r}: one of {SELECTORS}")
        if reward is None and needs_reward(selector):
            raise ValueError(f"the {selector!r} selector needs a reward model")
        self.reward: Scorer = reward if reward is not None else NoRewardModel()
        self.length_penalty = length_penalty
        self.selector = selector

    async def run(self, prep: PreparedRequest, deltas: AsyncIterable[Any]) -> tuple[list[Candidate], Ranked]:
        """All candidates (by index) and their ranking. `deltas` is the engine's stream for
        `prep` (vLLM `RequestOutput`s whose `outputs` are increments)."""
        candidates = await self.sample_and_score(prep, deltas)
        return candidates, self.rank(candidates)

    async def sample_and_score(self, prep: PreparedRequest, deltas: AsyncIterable[Any]) -> list[Candidate]:
        """Assemble `prep.best_of` candidates from `deltas`, scoring each as soon as it
        finishes; returns once every candidate is scored."""
        candidates = [Candidate(i) for i in range(prep.best_of)]
        scoring: dict[int, asyncio.Task[None]] = {}
        try:
            async for out in deltas:
                for delta in out.outputs:
                    candidate = candidates[delta.index]
                    candidate.extend(delta)
                    if candidate.finished and candidate.index not in scoring:
                        scoring[candidate.index] = asyncio.create_task(self.score(prep, candidate))
            if len(scoring) != prep.best_of:
                raise APIError(
                    500, f"engine finished {len(scoring)} of {prep.best_of} candidates", type="server_error"
                )
            decoded = time.perf_counter()
            await asyncio.gather(*scoring.values())
            metrics.REWARD_SCORING.labels(prep.model.name).observe(time.perf_counter() - decoded)
        finally:
            for task in scoring.values():  # a failure anywhere stops the scoring still running
                task.cancel()
        return candidates

    async def score(self, prep: PreparedRequest, candidate: Candidate) -> None:
        """Score one finished candidate: sets its `reward` and `reward_tokens`."""
        messages = prep.messages
        if messages is None:  # /v1/completions: the raw prompt is the user turn
            messages = [{"role": "user", "content": prep.prompt_text}]
        ids = self.reward.conversation_ids(messages, candidate.text)
        (candidate.reward,) = await self.reward.score([ids], f"{prep.request_id}-c{candidate.index}")
        candidate.reward_tokens += len(ids)  # after any partial scoring

    def rank(self, candidates: Sequence[Candidate]) -> Ranked:
        """Order candidates best first by the selector. Rewards (length penalty applied) are
        reported, and break majority ties, whenever every candidate was scored; the reward
        selectors refuse unscored candidates."""
        finish = [c.finish_reason for c in candidates]
        raw = [c.reward for c in candidates]
        unscored = [c.index for c, r in zip(candidates, raw, strict=True) if r is None]
        if unscored and needs_reward(self.selector):
            raise ValueError(f"candidate {unscored[0]} is not scored")
        rewards = None if unscored else penalised([r or 0.0 for r in raw], finish, self.length_penalty)
        reported: list[float | None] = list(rewards) if rewards is not None else [None] * len(candidates)
        tokens = sum(c.reward_tokens for c in candidates)
        if self.selector == "reward":
            assert rewards is not None
            return Ranked(rank_candidates(rewards, finish, 0.0), reported, tokens)
        if self.selector == "logprob":
            means = [mean_logprob(c.token_ids, c.logprobs) for c in candidates]
            return Ranked(logprob_order(means), reported, tokens, "logprob", scores=means)
        answers = [normalise_answer(c.text) for c in candidates]
        order = majority_order(answers, rewards, by_reward=self.selector == "reward+majority")
        return Ranked(order, reported, tokens, self.selector, scores=vote_shares(answers), answers=answers)


# --------------------------------------------------------------------------- pruning and early stop

FINISHED, PRUNED, STOPPED = "finished", "pruned", "stopped"
PRUNE_MODES = ("hold", "overlap")


@dataclass(frozen=True)
class Pruning:
    """A request's pruning schedule and early stop (off when both are empty)."""

    prune_at: tuple[int, ...] = ()  # decoded-token checkpoints, ascending
    fraction: float = 0.5  # share of the still-running candidates aborted at each checkpoint
    reward_threshold: float | None = None  # stop once n finished candidates reach it
    mode: str = "hold"  # PRUNE_MODES: pause at each checkpoint while scoring, or decode on
    margin: float | None = None  # also abort partials this far below the n-th finished reward

    @property
    def active(self) -> bool:
        return bool(self.prune_at) or self.reward_threshold is not None


def candidate_seed(seed: int | None, index: int) -> int | None:
    """Candidate `index`'s seed when each candidate is its own engine request: the seed vLLM
    gives child `index` of an n>1 request (parallel_sampling.py), so both paths sample alike."""
    return None if seed is None else seed + index


def resume_seed(seed: int | None, index: int, segment: int) -> int | None:
    """Candidate `index`'s seed for its `segment`-th resumed engine request ("hold" pruning):
    a seed of its own (vLLM restarts a request's generator from its seed, and re-using the
    first segment's would replay the same random draws at later positions)."""
    return None if seed is None else seed + index + 1_000_003 * segment


def prune_count(running: int, finished: int, n: int, fraction: float) -> int:
    """How many of `running` candidates a checkpoint aborts: floor(fraction * running), never
    leaving fewer than `n` survivors (finished plus still running)."""
    return max(0, min(math.floor(fraction * running), finished + running - n))


def to_prune(
    running: Sequence[Candidate], finished: int, n: int, fraction: float, at_checkpoint: int | None = None
) -> list[Candidate]:
    """The running candidates a checkpoint aborts: the lowest partial rewards (ties: the higher
    index goes first, so the order is deterministic). `at_checkpoint`: how many were running
    when the checkpoint was reached (the fraction is of those: on a real engine some finish
    while their partial answers are scored)."""
    k = prune_count(at_checkpoint if at_checkpoint is not None else len(running), finished, n, fraction)
    k = max(0, min(k, len(running), finished + len(running) - n))
    order = sorted(running, key=lambda c: (c.partial_reward or 0.0, -c.index))
    return order[:k]


def below_finished(
    running: Sequence[Candidate],
    candidates: Sequence[Candidate],
    n: int,
    margin: float,
    length_penalty: float = 0.0,
) -> list[Candidate]:
    """The running candidates whose partial reward is more than `margin` below the `n`-th best
    reward among the finished, scored candidates (the value that ranks them: length penalty
    applied); none while fewer than `n` have finished, so `n` survivors always remain."""
    scored = [c for c in candidates if c.outcome == FINISHED and c.reward is not None]
    if len(scored) < n:
        return []
    values = penalised([c.reward or 0.0 for c in scored], [c.finish_reason for c in scored], length_penalty)
    bar = sorted(values, reverse=True)[n - 1] - margin
    return [c for c in running if c.partial_reward is not None and c.partial_reward < bar]


def threshold_met(
    candidates: Sequence[Candidate], n: int, threshold: float, length_penalty: float = 0.0
) -> bool:
    """Whether `n` finished, scored candidates reach `threshold` with the value that ranks them
    and is reported as their reward (`length_penalty` subtracted when cut by max_tokens), so a
    truncated answer cannot stop the sampling that ranking would then demote."""
    scored = [c for c in candidates if c.outcome == FINISHED and c.reward is not None]
    rewards = penalised([c.reward or 0.0 for c in scored], [c.finish_reason for c in scored], length_penalty)
    return sum(r >= threshold for r in rewards) >= n


def survivors(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates that may become choices: finished and scored (never pruned or stopped)."""
    return [c for c in candidates if c.outcome == FINISHED]


async def sample_pruned(
    bon: BestOfN,
    prep: PreparedRequest,
    start: Callable[[Candidate, int | None], AsyncIterator[Any]],
    pruning: Pruning,
) -> list[Candidate]:
    """Phase 1 with pruning: candidate i decodes as its own engine request(s) (`start(c, upto)`,
    n=1: from `c`'s tokens so far until it has `upto` tokens, or to its end for None), so one
    can be aborted in the engine by cancelling its stream (vLLM aborts a request whose
    generator is closed). At each checkpoint of `pruning.prune_at`, once every running candidate
    has decoded that many tokens, their partial answers are scored through the finished-answer
    template and the lowest `fraction` aborted (outcome PRUNED); in "hold" mode each one's
    request ended at the checkpoint and the survivors are restarted from there. With
    `reward_threshold`, once `n` finished candidates reach it the rest are aborted (STOPPED).
    Returns every candidate; the finished ones are scored. A candidate the engine finished is
    FINISHED, even one an abort had just picked (its last output was already delivered): never
    pruned or stopped."""
    candidates = [Candidate(i) for i in range(prep.best_of)]
    wake = asyncio.Event()
    scoring: dict[int, asyncio.Task[None]] = {}
    checkpoints = sorted(set(pruning.prune_at))
    limit = prep.params.max_tokens
    hold = pruning.mode == "hold"

    def pause_at() -> int | None:
        """Where a "hold" segment ends: the next checkpoint below max_tokens (None: the end)."""
        if not hold or not checkpoints or (limit is not None and checkpoints[0] >= limit):
            return None
        return checkpoints[0]

    async def decode(c: Candidate, upto: int | None) -> None:
        try:
            c.segments += 1
            if c.token_ids:  # a resumed segment prefills the prompt and what it decoded so far
                c.resumed_prompt_tokens += len(prep.prompt_ids) + len(c.token_ids)
            async for out in start(c, upto):
                for delta in out.outputs:
                    c.extend(delta)
                wake.set()
            if upto is not None and c.finish_reason == "length" and len(c.token_ids) >= upto:
                c.finish_reason = None  # paused at the checkpoint: resumed or pruned there
                return
            if not c.finished:
                if c.outcome is not None:  # aborted: the stream ended early, as asked
                    return
                raise APIError(500, f"engine did not finish candidate {c.index}", type="server_error")
            c.outcome = FINISHED
            task = asyncio.create_task(bon.score(prep, c))
            task.add_done_callback(lambda _: wake.set())
            scoring[c.index] = task
        finally:
            wake.set()

    first = pause_at()
    decoding = {c.index: asyncio.create_task(decode(c, first)) for c in candidates}

    async def abort(chosen: Sequence[Candidate], outcome: str) -> None:
        """Abort `chosen` in the engine. vLLM's stream reports nothing of a request after its
        abort, so first give each stream one loop turn to read what the engine has already
        handed over (woken readers run before this task resumes): those tokens are billed, and a
        candidate whose last output had arrived finishes (FINISHED) instead of being aborted."""
        for c in chosen:
            c.outcome = outcome
        if not chosen:
            return
        await asyncio.sleep(0)
        for c in chosen:
            if not c.finished:
                decoding[c.index].cancel()

    try:
        while True:
            wake.clear()
            for task in [*decoding.values(), *scoring.values()]:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            running = [c for c in candidates if c.outcome is None]
            if pruning.reward_threshold is not None and threshold_met(
                candidates, prep.n, pruning.reward_threshold, bon.length_penalty
            ):
                await abort([c for c in running if not c.finished], STOPPED)
                break
            if not running and all(t.done() for t in scoring.values()):
                break
            unfinished = [c for c in running if not c.finished]  # a finished one is never pruned
            if checkpoints and unfinished and all(len(c.token_ids) >= checkpoints[0] for c in unfinished):
                checkpoints.pop(0)
                await _checkpoint(bon, prep, unfinished, candidates, pruning, abort, scoring)
                if hold:  # the survivors were paused: resume them to the next checkpoint
                    upto = pause_at()
                    for c in unfinished:
                        if c.outcome is None and decoding[c.index].done():
                            decoding[c.index] = asyncio.create_task(decode(c, upto))
                continue
            await wake.wait()
        decoded = time.perf_counter()
        await asyncio.gather(*(t for t in decoding.values() if not t.done()), return_exceptions=True)
        await asyncio.gather(*scoring.values())
        metrics.REWARD_SCORING.labels(prep.model.name).observe(time.perf_counter() - decoded)
    finally:
        for task in [*decoding.values(), *scoring.values()]:  # a failure anywhere aborts the rest
            task.cancel()
    return candidates


async def _checkpoint(
    bon: BestOfN,
    prep: PreparedRequest,
    running: list[Candidate],
    candidates: list[Candidate],
    pruning: Pruning,
    abort: Callable[[Sequence[Candidate], str], Awaitable[None]],
    scoring: dict[int, asyncio.Task[None]],
) -> None:
    """Score the running candidates' partial answers (one reward-model call), then abort the
    lowest `fraction` of those still unfinished (a finished one is never pruned) and, with a
    margin, those below the finished candidates (`below_finished`, once their own scoring is
    done)."""
    messages = prep.messages or [{"role": "user", "content": prep.prompt_text}]
    for c in running:
        c.partial_text, c.partial_tokens = c.text, len(c.token_ids)
    ids = [bon.reward.conversation_ids(messages, c.partial_text) for c in running]
    rewards = await bon.reward.score(ids, f"{prep.request_id}-p{running[0].partial_tokens}")
    for c, r, seq in zip(running, rewards, ids, strict=True):
        c.partial_reward = r
        c.reward_tokens += len(seq)
    if pruning.margin is not None:  # the finished candidates' rewards are the bar
        await asyncio.gather(*scoring.values())

    # some finish while the scoring runs: they count as finished, whether or not their stream
    # has ended yet, and are never pruned
    still = [c for c in running if c.outcome is None and not c.finished]
    finished = sum(1 for c in candidates if c.outcome == FINISHED or (c.outcome is None and c.finished))
    chosen = to_prune(still, finished, prep.n, pruning.fraction, at_checkpoint=len(running))
    if pruning.margin is not None:
        low = below_finished(still, candidates, prep.n, pruning.margin, bon.length_penalty)
        chosen += [c for c in low if c not in chosen]
    await abort(chosen, PRUNED)
