"""Pruned Best-of-N and the reward-threshold stop (server/bon.py, `sample_pruned`), with
named fakes: per-candidate engine streams (`FakeCandidateStreams`; `FakeEngineLoopStreams`,
where an engine task decodes ahead of the readers as vLLM's does) and the length reward
(`FakeRewardScorer`: reward = characters of prompt and answer)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from server.bon import (
    FINISHED,
    PRUNED,
    STOPPED,
    BestOfN,
    Candidate,
    Pruning,
    below_finished,
    candidate_seed,
    prune_count,
    sample_pruned,
    survivors,
    threshold_met,
    to_prune,
)
from server.config import Settings
from tests.server.conftest import assert_envelope
from tests.server.fakes import FakeCompletion, FakeResumableStepLLM, FakeRewardScorer, FakeSeededStepLLM
from tests.server.test_bon import prepared
from tests.server.test_bon_with_fakes import CHAT, bon_client  # noqa: F401 (the fixture)

MESSAGES = [{"role": "user", "content": "q"}]


class FakeCandidateStreams:
    """Candidate i decodes `lengths[i]` tokens, each of text `"a" * widths[i]`, one delta per
    engine step, ending with `finish` ("length": cut by max_tokens); records which candidates
    were aborted (their stream closed early)."""

    def __init__(self, lengths: list[int], widths: list[int], finish: str = "stop") -> None:
        self.lengths, self.widths, self.finish = lengths, widths, finish
        self.aborted: set[int] = set()
        self.decoded = [0] * len(lengths)

    async def start(self, c: Candidate, upto: int | None = None) -> AsyncIterator[Any]:
        index = c.index
        try:
            for step in range(self.lengths[index]):
                await asyncio.sleep(0)
                self.decoded[index] += 1
                last = step == self.lengths[index] - 1
                delta = FakeCompletion(0, "a" * self.widths[index], [7], self.finish if last else None)
                yield SimpleNamespace(outputs=[delta])
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.add(index)
            raise


class FakeEngineLoopStreams:
    """Streams as vLLM's AsyncLLM delivers them: one engine task decodes a token per loop turn
    for every live candidate and hands it to that candidate's output collector (merged with
    what the reader has not taken yet), and candidate i's stream takes what its collector
    holds, else waits. So the engine runs ahead of the readers: at an abort it may have
    delivered tokens, even a candidate's last, that bonserve has not read. `produced`: tokens
    the engine decoded per candidate; an aborted candidate stops decoding."""

    def __init__(self, lengths: list[int], widths: list[int]) -> None:
        self.lengths, self.widths = lengths, widths
        self.produced = [0] * len(lengths)
        self.pending: list[FakeCompletion | None] = [None] * len(lengths)
        self.ready = [asyncio.Event() for _ in lengths]
        self.aborted: set[int] = set()
        self.engine: asyncio.Task[None] | None = None

    def _live(self) -> list[int]:
        return [i for i, n in enumerate(self.lengths) if i not in self.aborted and self.produced[i] < n]

    async def _run(self) -> None:
        while live := self._live():
            for i in live:
                self.produced[i] += 1
                reason = "stop" if self.produced[i] == self.lengths[i] else None
                text, held = "a" * self.widths[i], self.pending[i]
                if held is None:
                    self.pending[i] = FakeCompletion(0, text, [7], reason)
                else:
                    held.text, held.token_ids = held.text + text, [*held.token_ids, 7]
                    held.finish_reason = reason
                self.ready[i].set()
            await asyncio.sleep(0)

    async def start(self, c: Candidate, upto: int | None = None) -> AsyncIterator[Any]:
        index = c.index
        if self.engine is None:
            self.engine = asyncio.create_task(self._run())
        try:
            while True:
                while (out := self.pending[index]) is None:
                    self.ready[index].clear()
                    await self.ready[index].wait()
                self.pending[index] = None
                yield SimpleNamespace(outputs=[out])
                if out.finish_reason is not None:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.add(index)
            raise


class SnapshotScorer(FakeRewardScorer):
    """The length reward; records `streams.produced` as each checkpoint's partial scoring
    returns, the moment the checkpoint decides whom to prune (no other task runs in between)."""

    def __init__(self, streams: FakeEngineLoopStreams) -> None:
        super().__init__()
        self.streams = streams
        self.at_decision: list[list[int]] = []

    async def score(self, sequences: Sequence[list[int]], request_id: str) -> list[float]:
        rewards = await super().score(sequences, request_id)
        if "-p" in request_id:
            self.at_decision.append(list(self.streams.produced))
        return rewards


def done(index: int, reward: float) -> Candidate:
    return Candidate(index, finish_reason="stop", reward=reward, outcome=FINISHED)


# --------------------------------------------------------------------------- pure parts


def test_prune_count_never_leaves_fewer_than_n() -> None:
    assert prune_count(running=8, finished=0, n=1, fraction=0.5) == 4
    assert prune_count(running=4, finished=0, n=3, fraction=0.5) == 1
    assert prune_count(running=2, finished=0, n=2, fraction=0.5) == 0
    assert prune_count(running=3, finished=1, n=1, fraction=0.9) == 2
    assert prune_count(running=0, finished=4, n=1, fraction=0.5) == 0


def test_to_prune_takes_the_lowest_partial_rewards_ties_to_the_higher_index() -> None:
    running = [Candidate(i, partial_reward=r) for i, r in enumerate([3.0, 1.0, 1.0, 5.0])]
    assert [c.index for c in to_prune(running, 0, 1, 0.5)] == [2, 1]


def test_the_fraction_is_of_those_running_at_the_checkpoint() -> None:
    still = [Candidate(i, partial_reward=float(i)) for i in range(2)]  # two finished while scoring
    assert [c.index for c in to_prune(still, 2, 1, 0.5, at_checkpoint=4)] == [0, 1]
    assert [c.index for c in to_prune(still, 0, 1, 0.5, at_checkpoint=4)] == [0]  # keeps n


def test_threshold_counts_finished_scored_candidates() -> None:
    cands = [done(0, 2.0), done(1, 0.5), Candidate(2, partial_reward=9.0)]
    assert threshold_met(cands, 1, 1.0)
    assert not threshold_met(cands, 2, 1.0)


def test_threshold_compares_the_penalised_reward_that_ranks() -> None:
    cut = Candidate(0, finish_reason="length", reward=11.0, outcome=FINISHED)
    assert threshold_met([cut], 1, 5.0)  # no penalty: 11 >= 5
    assert not threshold_met([cut], 1, 5.0, length_penalty=10.0)  # ranked (and reported) as 1
    assert threshold_met([done(1, 11.0)], 1, 5.0, length_penalty=10.0)  # not cut: no penalty


def test_below_finished_uses_the_nth_best_finished_reward_as_the_bar() -> None:
    running = [Candidate(i, partial_reward=r) for i, r in ((2, 1.0), (3, 4.0), (4, 6.0))]
    finished = [done(0, 5.0), done(1, 3.0)]
    cands = [*finished, *running]
    assert [c.index for c in below_finished(running, cands, 1, 0.0)] == [2, 3]  # below 5
    assert [c.index for c in below_finished(running, cands, 2, 0.0)] == [2]  # below 3
    assert [c.index for c in below_finished(running, cands, 1, 2.0)] == [2]  # below 5 - 2
    assert below_finished(running, cands, 3, 0.0) == []  # fewer than n finished: no bar
    unscored = [Candidate(5, finish_reason="stop", outcome=FINISHED), *running]  # scoring in flight
    assert below_finished(running, unscored, 1, 0.0) == []
    cut = Candidate(0, finish_reason="length", reward=5.0, outcome=FINISHED)
    # ranked as 5 - 3 = 2: only the partial at 1.0 is below it
    assert [c.index for c in below_finished(running, [cut, *running], 1, 0.0, length_penalty=3.0)] == [2]


def test_candidate_seed_matches_vllm_children() -> None:
    assert candidate_seed(7, 3) == 10
    assert candidate_seed(None, 3) is None


def test_pruning_is_off_by_default() -> None:
    assert not Pruning().active
    assert Pruning(prune_at=(4,)).active and Pruning(reward_threshold=1.0).active


# --------------------------------------------------------------------------- the sampler


@pytest.mark.timeout(10)
async def test_checkpoint_aborts_the_worst_half_and_keeps_partial_rewards() -> None:
    streams = FakeCandidateStreams(lengths=[10] * 4, widths=[1, 2, 3, 4])
    scorer = FakeRewardScorer()
    prep = prepared(best_of=4, messages=MESSAGES)
    cands = await sample_pruned(
        BestOfN(scorer), prep, streams.start, Pruning(prune_at=(4,), fraction=0.5, mode="overlap")
    )
    assert [c.outcome for c in cands] == [PRUNED, PRUNED, FINISHED, FINISHED]
    assert streams.aborted == {0, 1}
    assert all(streams.decoded[i] < 10 for i in (0, 1)) and streams.decoded[2:] == [10, 10]
    for c in cands:  # partial answer scored through the same template: prompt + answer chars
        assert c.partial_tokens >= 4 and c.partial_reward == 1 + len(c.partial_text)
    assert [c.index for c in survivors(cands)] == [2, 3]
    assert all(c.reward is None for c in cands[:2])
    # reward-model tokens: partial scoring of all four, then the two survivors in full
    partial = sum(1 + len(c.partial_text) for c in cands)
    assert sum(c.reward_tokens for c in cands) == partial + (1 + 30) + (1 + 40)
    ranked = BestOfN(scorer).rank(survivors(cands))
    assert [survivors(cands)[i].index for i in ranked.order] == [3, 2]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("mode", ["overlap", "hold"])
async def test_margin_aborts_partials_below_the_finished_and_keeps_the_rest(mode: str) -> None:
    """Fraction 0, margin 0: at the checkpoint candidates 0 and 1 have finished (reward
    1 + 10 = 11 each); running candidate 2's partial scores 1 + 4 = 5 < 11 and is aborted,
    candidate 3's 1 + 16 = 17 is not and decodes to its end."""
    streams = FakeCandidateStreams(lengths=[2, 2, 20, 20], widths=[5, 5, 1, 4])
    prep = prepared(best_of=4, messages=MESSAGES)
    pruning = Pruning(prune_at=(4,), fraction=0.0, mode=mode, margin=0.0)
    cands = await sample_pruned(BestOfN(FakeRewardScorer()), prep, resumable(streams, mode), pruning)
    assert [c.outcome for c in cands] == [FINISHED, FINISHED, PRUNED, FINISHED]
    assert [c.reward for c in (cands[0], cands[1], cands[3])] == [11.0, 11.0, 81.0]
    assert cands[2].partial_reward == 5.0 and cands[2].reward is None
    assert streams.decoded[2] < 20 and streams.decoded[3] == 20
    # a margin wider than the gap prunes nothing; fraction 0 then leaves every candidate
    streams = FakeCandidateStreams(lengths=[2, 2, 20, 20], widths=[5, 5, 1, 4])
    wide = Pruning(prune_at=(4,), fraction=0.0, mode=mode, margin=7.0)
    cands = await sample_pruned(BestOfN(FakeRewardScorer()), prep, resumable(streams, mode), wide)
    assert [c.outcome for c in cands] == [FINISHED] * 4 and streams.decoded == [2, 2, 20, 20]


def resumable(
    streams: FakeCandidateStreams, mode: str
) -> Callable[[Candidate, int | None], AsyncIterator[Any]]:
    """`streams.start`, and in "hold" mode a segment that ends at `upto` tokens (as the engine
    ends a request at its max_tokens, finish "length") and resumes from the candidate's tokens."""
    if mode == "overlap":
        return streams.start

    async def start(c: Candidate, upto: int | None) -> AsyncIterator[Any]:
        index, have = c.index, len(c.token_ids)
        end = streams.lengths[index] if upto is None else min(upto, streams.lengths[index])
        try:
            for step in range(have, end):
                await asyncio.sleep(0)
                streams.decoded[index] += 1
                last = step == end - 1
                reason = ("stop" if end == streams.lengths[index] else "length") if last else None
                yield SimpleNamespace(outputs=[FakeCompletion(0, "a" * streams.widths[index], [7], reason)])
        except (asyncio.CancelledError, GeneratorExit):
            streams.aborted.add(index)
            raise

    return start


@pytest.mark.timeout(10)
async def test_candidates_that_finish_before_the_checkpoint_match_full_best_of_n() -> None:
    streams = FakeCandidateStreams(lengths=[3] * 4, widths=[1, 2, 3, 4])
    prep = prepared(best_of=4, messages=MESSAGES)
    cands = await sample_pruned(
        BestOfN(FakeRewardScorer()), prep, streams.start, Pruning(prune_at=(4,), mode="overlap")
    )
    assert [c.outcome for c in cands] == [FINISHED] * 4 and not streams.aborted
    assert [c.reward for c in cands] == [4.0, 7.0, 10.0, 13.0]
    assert all(c.partial_reward is None for c in cands)


@pytest.mark.timeout(10)
async def test_checkpoints_never_leave_fewer_than_n_survivors() -> None:
    streams = FakeCandidateStreams(lengths=[20] * 4, widths=[1, 2, 3, 4])
    prep = prepared(best_of=4, n=3, messages=MESSAGES)
    cands = await sample_pruned(
        BestOfN(FakeRewardScorer()), prep, streams.start, Pruning((2, 4, 8), 0.9, mode="overlap")
    )
    assert [c.outcome for c in cands] == [PRUNED, FINISHED, FINISHED, FINISHED]


@pytest.mark.timeout(10)
async def test_threshold_stops_the_rest_once_n_finished_reach_it() -> None:
    streams = FakeCandidateStreams(lengths=[2, 50, 50, 50], widths=[5, 1, 1, 1])
    prep = prepared(best_of=4, messages=MESSAGES)
    cands = await sample_pruned(
        BestOfN(FakeRewardScorer()), prep, streams.start, Pruning(reward_threshold=5.0)
    )
    assert cands[0].outcome == FINISHED and cands[0].reward == 11.0
    assert [c.outcome for c in cands[1:]] == [STOPPED] * 3
    assert streams.aborted == {1, 2, 3} and max(streams.decoded[1:]) < 50


@pytest.mark.timeout(10)
async def test_threshold_stop_uses_the_length_penalty_ranking_applies() -> None:
    streams = FakeCandidateStreams(lengths=[2, 6, 6, 6], widths=[5, 1, 1, 1], finish="length")
    prep = prepared(best_of=4, messages=MESSAGES)
    bon = BestOfN(FakeRewardScorer(), length_penalty=10.0)
    cands = await sample_pruned(bon, prep, streams.start, Pruning(reward_threshold=5.0))
    # candidate 0 scores 11 raw, 1 ranked: below the threshold, so nothing is stopped
    assert [c.outcome for c in cands] == [FINISHED] * 4 and not streams.aborted
    ranked = bon.rank(survivors(cands))
    assert ranked.rewards[0] == 1.0 and all(r is not None and r < 5.0 for r in ranked.rewards)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("first", [6, 10])
async def test_aborts_bill_what_the_engine_delivered_and_never_prune_a_finished_one(first: int) -> None:
    # the engine decodes ahead of the readers; with first=6 candidate 0 (the lowest partial
    # reward) has its last token decoded and delivered, unread, when the checkpoint decides
    streams = FakeEngineLoopStreams(lengths=[first, 10, 10, 10], widths=[1, 2, 3, 4])
    scorer = SnapshotScorer(streams)
    prep = prepared(best_of=4, messages=MESSAGES)
    cands = await sample_pruned(
        BestOfN(scorer), prep, streams.start, Pruning(prune_at=(4,), fraction=0.5, mode="overlap")
    )
    assert streams.engine is not None
    await streams.engine
    (decided,) = scorer.at_decision
    for c in cands:
        if decided[c.index] == streams.lengths[c.index]:  # the engine had finished it
            assert c.outcome == FINISHED and c.finished and c.reward is not None
        # every token the engine decoded before the abort is billed; what it decoded after
        # (the step in flight) vLLM never reports
        assert decided[c.index] <= len(c.token_ids) <= streams.produced[c.index]
    pruned = [c for c in cands if c.outcome == PRUNED]
    assert pruned and all(not c.finished and c.index in streams.aborted for c in pruned)
    assert [c.outcome for c in cands].count(PRUNED) == (1 if first == 6 else 2)
    assert (cands[0].outcome == FINISHED) == (first == 6)


class FakeSegmentStreams:
    """Engine requests as "hold" pruning makes them: candidate i would decode `lengths[i]`
    tokens of width `widths[i]` in all; a request starts from the candidate's tokens so far and
    ends with "length" once it has `upto` tokens (else "stop" at its end). Records each request
    as (index, tokens it started from, upto) and any request closed early."""

    def __init__(self, lengths: list[int], widths: list[int]) -> None:
        self.lengths, self.widths = lengths, widths
        self.requests: list[tuple[int, int, int | None]] = []
        self.aborted: set[int] = set()

    async def start(self, c: Candidate, upto: int | None = None) -> AsyncIterator[Any]:
        begin, total = len(c.token_ids), self.lengths[c.index]
        end = total if upto is None else min(upto, total)
        self.requests.append((c.index, begin, upto))
        try:
            for pos in range(begin, end):
                await asyncio.sleep(0)
                last = pos == end - 1
                reason = ("stop" if end == total else "length") if last else None
                yield SimpleNamespace(outputs=[FakeCompletion(0, "a" * self.widths[c.index], [7], reason)])
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.add(c.index)
            raise


@pytest.mark.timeout(10)
async def test_hold_pauses_at_the_checkpoint_and_resumes_only_the_survivors() -> None:
    streams = FakeSegmentStreams(lengths=[10] * 4, widths=[1, 2, 3, 4])
    prep = prepared(best_of=4, messages=MESSAGES)
    cands = await sample_pruned(BestOfN(FakeRewardScorer()), prep, streams.start, Pruning((4,), 0.5))
    assert [c.outcome for c in cands] == [PRUNED, PRUNED, FINISHED, FINISHED]
    # every candidate's first request ends at the checkpoint; only the survivors resume from it
    assert streams.requests == [(0, 0, 4), (1, 0, 4), (2, 0, 4), (3, 0, 4), (2, 4, None), (3, 4, None)]
    assert not streams.aborted  # nothing was decoding when the pruned ones were dropped
    assert [len(c.token_ids) for c in cands] == [4, 4, 10, 10]  # a pruned one cost its prefix only
    assert all(c.partial_tokens == 4 and c.partial_reward == 1 + len(c.partial_text) for c in cands)
    assert [c.finish_reason for c in cands[2:]] == ["stop", "stop"] and cands[0].finish_reason is None
    resumed = [c.resumed_prompt_tokens for c in cands]
    assert resumed == [0, 0, len(prep.prompt_ids) + 4, len(prep.prompt_ids) + 4]
    assert [c.text for c in cands[2:]] == ["aaa" * 10, "aaaa" * 10]


@pytest.mark.timeout(10)
async def test_hold_with_two_checkpoints_and_one_past_max_tokens() -> None:
    streams = FakeSegmentStreams(lengths=[12] * 4, widths=[1, 2, 3, 4])
    prep = prepared(best_of=4, messages=MESSAGES, max_tokens=12)
    cands = await sample_pruned(BestOfN(FakeRewardScorer()), prep, streams.start, Pruning((2, 6, 12), 0.5))
    assert [c.outcome for c in cands] == [PRUNED, PRUNED, PRUNED, FINISHED]
    # 2: four paused, two pruned; 6: two paused, one pruned; 12 is max_tokens: no pause there
    assert [r for r in streams.requests if r[1] > 0] == [(2, 2, 6), (3, 2, 6), (3, 6, None)]
    assert [len(c.token_ids) for c in cands] == [2, 2, 6, 12]
    assert cands[3].segments == 3


@pytest.mark.timeout(10)
async def test_hold_counts_a_candidate_ending_at_the_checkpoint_as_finished() -> None:
    # candidate 0 ends (EOS) on the checkpoint token itself: finished, never pruned
    streams = FakeSegmentStreams(lengths=[4, 10, 10, 10], widths=[1, 2, 3, 4])
    prep = prepared(best_of=4, messages=MESSAGES)
    cands = await sample_pruned(BestOfN(FakeRewardScorer()), prep, streams.start, Pruning((4,), 0.5))
    assert cands[0].outcome == FINISHED and cands[0].reward == 5.0
    assert [c.outcome for c in cands[1:]] == [PRUNED, FINISHED, FINISHED]  # half of the 3 running: 1


@pytest.mark.timeout(10)
async def test_hold_threshold_stops_paused_and_resumed_candidates() -> None:
    streams = FakeSegmentStreams(lengths=[2, 50, 50, 50], widths=[5, 1, 1, 1])
    prep = prepared(best_of=4, messages=MESSAGES, max_tokens=50)
    cands = await sample_pruned(BestOfN(FakeRewardScorer()), prep, streams.start, Pruning((8,), 0.5, 5.0))
    assert cands[0].outcome == FINISHED and [c.outcome for c in cands[1:]] == [STOPPED] * 3
    assert all(len(c.token_ids) <= 8 for c in cands[1:])  # stopped at or before the checkpoint


# --------------------------------------------------------------------------- over HTTP


@pytest.mark.timeout(30)
async def test_pruned_request_over_http_bills_pruned_prefixes(bon_client: Callable[..., Any]) -> None:  # noqa: F811
    engine = FakeSeededStepLLM(steps=10)
    c = await bon_client(policy=engine)
    extras = {
        "best_of": 4,
        "seed": 0,
        "bon_prune_at": [4],
        "bon_prune_fraction": 0.5,
        "bon_prune_mode": "overlap",
        "return_candidates": True,
    }
    body = (await c.post("/v1/chat/completions", json={**CHAT, **extras})).json()
    assert [p.n for p in engine.requests] == [1] * 4 and [p.seed for p in engine.requests] == [0, 1, 2, 3]
    assert engine.aborted == 2
    bs = body["usage"]["bonserve"]
    assert (bs["candidates"], bs["candidates_finished"], bs["candidates_pruned"]) == (4, 2, 2)
    assert 2 * 10 + 2 * 4 <= body["usage"]["completion_tokens"] < 4 * 10  # pruned prefixes billed
    assert body["choices"][0]["message"]["content"] == "wwww" * 10
    cands = body["candidates"]
    assert [(x["index"], x["outcome"]) for x in cands] == [
        (3, "finished"),
        (2, "finished"),
        (0, "pruned"),
        (1, "pruned"),
    ]
    assert all(x["partial_reward"] is not None and x["choice_index"] is None for x in cands[2:])
    # what was scored is shown: a prefix of what it had decoded when aborted
    assert all(x["partial_text"] and x["text"].startswith(x["partial_text"]) for x in cands[2:])
    assert all(x["partial_text"] is None for x in cands[:2])  # survivors: their final reward ranks
    metrics = (await c.get("/metrics")).text
    assert 'bonserve_bon_candidates_total{model="fake",outcome="pruned"} 2.0' in metrics


@pytest.mark.timeout(30)
async def test_hold_over_http_resumes_the_survivors_and_bills_the_prefill(
    bon_client: Callable[..., Any],  # noqa: F811
) -> None:
    engine = FakeResumableStepLLM(steps=10)
    c = await bon_client(policy=engine)
    extras = {"best_of": 4, "seed": 0, "max_tokens": 16, "bon_prune_at": [4], "return_candidates": True}
    body = (await c.post("/v1/chat/completions", json={**CHAT, **extras})).json()
    first, resumed = engine.requests[:4], engine.requests[4:]
    assert [(p.n, p.seed, p.max_tokens) for p in first] == [(1, i, 4) for i in range(4)]
    # the two survivors (widest tokens: seeds 2 and 3) resume from their 4 tokens, own seeds
    assert [p.max_tokens for p in resumed] == [12, 12] and engine.aborted == 0
    assert {p.seed for p in resumed}.isdisjoint(range(4))
    prompt = engine.prompts[0]
    assert all(ids[: len(prompt)] == prompt and len(ids) == len(prompt) + 4 for ids in engine.prompts[4:])
    bs = body["usage"]["bonserve"]
    assert (bs["candidates_finished"], bs["candidates_pruned"]) == (2, 2)
    assert body["usage"]["completion_tokens"] == 2 * 4 + 2 * 10  # pruned: their prefix only
    assert bs["resumed_prompt_tokens"] == 2 * (len(prompt) + 4)
    assert body["choices"][0]["message"]["content"] == "wwww" * 10
    assert [(x["index"], x["outcome"]) for x in body["candidates"]] == [
        (3, "finished"),
        (2, "finished"),
        (0, "pruned"),
        (1, "pruned"),
    ]
    metrics = (await c.get("/metrics")).text
    assert f'bonserve_bon_resumed_prompt_tokens_total{{model="fake"}} {2.0 * (len(prompt) + 4)}' in metrics


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stop": ["\n"]}, "stop"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"presence_penalty": -0.5}, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
async def test_hold_refuses_sampling_state_a_resume_would_lose(
    bon_client: Callable[..., Any],  # noqa: F811
    extra: dict[str, Any],
    param: str,
) -> None:
    engine = FakeResumableStepLLM()
    c = await bon_client(policy=engine)
    body = {**CHAT, "best_of": 4, "bon_prune_at": [4], **extra}
    err = assert_envelope(await c.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == param and "bon_prune_mode 'hold'" in err["message"]
    assert not engine.requests
    ok = await c.post("/v1/chat/completions", json={**body, "bon_prune_mode": "overlap"})
    assert ok.status_code == 200, ok.text
    plain = await c.post("/v1/chat/completions", json={**CHAT, "best_of": 4, **extra})  # no pruning
    assert plain.status_code == 200, plain.text


@pytest.mark.timeout(30)
async def test_threshold_over_http_and_server_defaults(bon_client: Callable[..., Any]) -> None:  # noqa: F811
    # 10 steps: the candidates are still decoding when the checkpoint's scoring returns (ones
    # that had finished by then would count as finished, never pruned)
    engine = FakeSeededStepLLM(steps=10)
    c = await bon_client(policy=engine, default_bon_prune="fake=4@0.5", bon_prune_mode="overlap")
    body = (await c.post("/v1/chat/completions", json={**CHAT, "best_of": 4, "seed": 0})).json()
    assert body["usage"]["bonserve"]["candidates_pruned"] == 2  # the model's default schedule
    off = {**CHAT, "best_of": 4, "seed": 0, "bon_prune_at": []}
    body = (await c.post("/v1/chat/completions", json=off)).json()
    assert body["usage"]["bonserve"]["candidates_pruned"] is None  # [] turns the default off
    assert engine.requests[-1].n == 4 and body["usage"]["completion_tokens"] == 4 * 10
    stop = {"best_of": 4, "seed": 0, "bon_prune_at": [], "bon_reward_threshold": 0.0}
    body = (await c.post("/v1/chat/completions", json={**CHAT, **stop})).json()
    assert body["usage"]["bonserve"]["candidates_finished"] >= 1
    assert (
        body["usage"]["bonserve"]["candidates_stopped"]
        == 4 - body["usage"]["bonserve"]["candidates_finished"]
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"bon_prune_at": [8, 4]}, "bon_prune_at"),
        ({"bon_prune_at": [0]}, "bon_prune_at"),
        ({"bon_prune_fraction": 1.0}, "bon_prune_fraction"),
        ({"bon_prune_fraction": -0.1}, "bon_prune_fraction"),
        ({"bon_prune_at": [4], "bon_prune_margin": "x"}, "bon_prune_margin"),
        ({"bon_prune_at": "4"}, "bon_prune_at"),
    ],
)
async def test_invalid_pruning_fields_are_400(
    bon_client: Callable[..., Any],  # noqa: F811
    extra: dict[str, Any],
    param: str,
) -> None:
    c = await bon_client(policy=FakeSeededStepLLM())
    r = await c.post("/v1/chat/completions", json={**CHAT, "best_of": 4, **extra})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error" and param in r.json()["error"]["message"]


def test_invalid_server_defaults_are_refused() -> None:
    for bad in (
        {"default_bon_prune": "8+4"},
        {"default_bon_prune": "4@1.5"},
        {"default_bon_reward_threshold": "x"},
        {"default_bon_prune_margin": "p=nan"},
        {"default_bon_prune": "4@0"},  # prunes nothing without a margin
        {"default_bon_prune": "policy=4@0", "default_bon_prune_margin": "other=0.5"},
    ):
        with pytest.raises(ValueError, match=r"default_bon|bon prune"):
            Settings(**bad)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "extra",
    [
        {"bon_prune_at": [4]},  # best_of == n: nothing is reranked
        {"n": 2, "best_of": 2, "bon_reward_threshold": 1.0},
        {"best_of": 4, "bon_selector": "majority", "bon_prune_at": [4]},
        {"best_of": 4, "bon_selector": "majority", "bon_reward_threshold": 1.0},
        {"best_of": 4, "bon_selector": "logprob", "bon_prune_fraction": 0.5},
    ],
)
async def test_pruning_fields_where_nothing_is_reward_ranked_are_400(
    bon_client: Callable[..., Any],  # noqa: F811
    extra: dict[str, Any],
) -> None:
    engine = FakeSeededStepLLM()
    c = await bon_client(policy=engine)
    r = await c.post("/v1/chat/completions", json={**CHAT, **extra})
    param = next(k for k in extra if k.startswith("bon_") and k != "bon_selector")
    err = assert_envelope(r, 400)
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert f"{param} needs best_of > n and a reward-based bon_selector" in err["message"]
    assert not engine.requests  # refused before the engine


@pytest.mark.timeout(30)
async def test_server_defaults_and_off_fields_do_not_refuse_where_nothing_is_reward_ranked(
    bon_client: Callable[..., Any],  # noqa: F811
) -> None:
    engine = FakeSeededStepLLM(steps=6)
    c = await bon_client(policy=engine, default_bon_prune="4@0.5", default_bon_reward_threshold="0")
    extras: list[dict[str, Any]] = [
        {},  # best_of == n
        {"best_of": 4, "bon_selector": "majority"},
        {"bon_prune_at": [], "bon_reward_threshold": None, "bon_prune_fraction": None},
    ]
    for extra in extras:
        r = await c.post("/v1/chat/completions", json={**CHAT, **extra})
        assert r.status_code == 200, r.text
        bs = r.json()["usage"]["bonserve"]
        assert bs["candidates_pruned"] is None and bs["candidates_stopped"] is None  # defaults not applied
    assert [p.n for p in engine.requests] == [1, 4, 1]


@pytest.mark.timeout(30)
async def test_a_prune_fraction_without_a_schedule_is_400(bon_client: Callable[..., Any]) -> None:  # noqa: F811
    """The fraction alone would silently prune nothing: refused, unless a server default
    schedule gives it checkpoints."""
    engine = FakeSeededStepLLM(steps=10)
    c = await bon_client(policy=engine)
    for extra in ({"bon_prune_fraction": 0.5}, {"bon_prune_at": [], "bon_prune_fraction": 0.5}):
        r = await c.post("/v1/chat/completions", json={**CHAT, "best_of": 4, **extra})
        err = assert_envelope(r, 400)
        assert err["param"] == "bon_prune_fraction" and "needs bon_prune_at" in err["message"]
    assert not engine.requests
    c = await bon_client(policy=engine, default_bon_prune="4@0.25")
    r = await c.post(
        "/v1/chat/completions", json={**CHAT, "best_of": 4, "seed": 0, "bon_prune_fraction": 0.5}
    )
    assert r.status_code == 200, r.text
    assert (
        r.json()["usage"]["bonserve"]["candidates_pruned"] == 2
    )  # the request's fraction, the default's checkpoint


@pytest.mark.timeout(30)
async def test_margin_needs_a_schedule_and_fraction_zero_needs_a_margin(
    bon_client: Callable[..., Any],  # noqa: F811
) -> None:
    engine = FakeSeededStepLLM(steps=10)
    c = await bon_client(policy=engine)
    base = {**CHAT, "best_of": 4, "seed": 0}
    err = assert_envelope(await c.post("/v1/chat/completions", json={**base, "bon_prune_margin": 0.0}), 400)
    assert err["param"] == "bon_prune_margin" and "needs bon_prune_at" in err["message"]
    zero = {**base, "bon_prune_at": [4], "bon_prune_fraction": 0.0}
    err = assert_envelope(await c.post("/v1/chat/completions", json=zero), 400)
    assert err["param"] == "bon_prune_fraction" and "prunes nothing" in err["message"]
    assert not engine.requests
    r = await c.post("/v1/chat/completions", json={**zero, "bon_prune_margin": 1e9})
    assert r.status_code == 200, r.text  # a margin no partial can fall below: nothing pruned
    assert r.json()["usage"]["bonserve"]["candidates_pruned"] == 0
    assert (
        Settings(default_bon_prune="p=4@0", default_bon_prune_margin="0.5").bon_prune_margin_for("p") == 0.5
    )


@pytest.mark.timeout(30)
async def test_explicit_null_turns_a_server_default_off(bon_client: Callable[..., Any]) -> None:  # noqa: F811
    engine = FakeSeededStepLLM(steps=10)
    c = await bon_client(policy=engine, default_bon_prune="4@0.5", default_bon_reward_threshold="0")
    base = {**CHAT, "best_of": 4, "seed": 0}
    body = (await c.post("/v1/chat/completions", json=base)).json()
    assert body["usage"]["bonserve"]["candidates_finished"] < 4  # the defaults apply when absent
    body = (await c.post("/v1/chat/completions", json={**base, "bon_reward_threshold": None})).json()
    bs = body["usage"]["bonserve"]
    assert (bs["candidates_pruned"], bs["candidates_stopped"]) == (2, 0)  # only the default schedule
    off = {**base, "bon_reward_threshold": None, "bon_prune_at": None}
    body = (await c.post("/v1/chat/completions", json=off)).json()
    assert body["usage"]["bonserve"]["candidates_pruned"] is None  # both off: plain Best-of-N
    assert engine.requests[-1].n == 4 and body["usage"]["completion_tokens"] == 4 * 10
