"""Pruned Best-of-N and the reward-threshold stop (server/bon.py, `sample_pruned`), with
named fakes: per-candidate engine streams (`FakeCandidateStreams`) and the length reward
(`FakeRewardScorer`: reward = characters of prompt and answer)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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
    candidate_seed,
    prune_count,
    sample_pruned,
    survivors,
    threshold_met,
    to_prune,
)
from server.config import Settings
from tests.server.fakes import FakeCompletion, FakeRewardScorer, FakeSeededStepLLM
from tests.server.test_bon import prepared
from tests.server.test_bon_with_fakes import CHAT, bon_client  # noqa: F401 (the fixture)

MESSAGES = [{"role": "user", "content": "q"}]


class FakeCandidateStreams:
    """Candidate i decodes `lengths[i]` tokens, each of text `"a" * widths[i]`, one delta per
    engine step; records which candidates were aborted (their stream closed early)."""

    def __init__(self, lengths: list[int], widths: list[int]) -> None:
        self.lengths, self.widths = lengths, widths
        self.aborted: set[int] = set()
        self.decoded = [0] * len(lengths)

    async def start(self, index: int) -> AsyncIterator[Any]:
        try:
            for step in range(self.lengths[index]):
                await asyncio.sleep(0)
                self.decoded[index] += 1
                last = step == self.lengths[index] - 1
                delta = FakeCompletion(0, "a" * self.widths[index], [7], "stop" if last else None)
                yield SimpleNamespace(outputs=[delta])
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.add(index)
            raise


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
    cands = await sample_pruned(BestOfN(scorer), prep, streams.start, Pruning(prune_at=(4,), fraction=0.5))
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
async def test_candidates_that_finish_before_the_checkpoint_match_full_best_of_n() -> None:
    streams = FakeCandidateStreams(lengths=[3] * 4, widths=[1, 2, 3, 4])
    prep = prepared(best_of=4, messages=MESSAGES)
    cands = await sample_pruned(BestOfN(FakeRewardScorer()), prep, streams.start, Pruning(prune_at=(4,)))
    assert [c.outcome for c in cands] == [FINISHED] * 4 and not streams.aborted
    assert [c.reward for c in cands] == [4.0, 7.0, 10.0, 13.0]
    assert all(c.partial_reward is None for c in cands)


@pytest.mark.timeout(10)
async def test_checkpoints_never_leave_fewer_than_n_survivors() -> None:
    streams = FakeCandidateStreams(lengths=[20] * 4, widths=[1, 2, 3, 4])
    prep = prepared(best_of=4, n=3, messages=MESSAGES)
    cands = await sample_pruned(BestOfN(FakeRewardScorer()), prep, streams.start, Pruning((2, 4, 8), 0.9))
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
    metrics = (await c.get("/metrics")).text
    assert 'bonserve_bon_candidates_total{model="fake",outcome="pruned"} 2.0' in metrics


@pytest.mark.timeout(30)
async def test_threshold_over_http_and_server_defaults(bon_client: Callable[..., Any]) -> None:  # noqa: F811
    engine = FakeSeededStepLLM(steps=6)
    c = await bon_client(policy=engine, default_bon_prune="fake=2@0.5")
    body = (await c.post("/v1/chat/completions", json={**CHAT, "best_of": 4, "seed": 0})).json()
    assert body["usage"]["bonserve"]["candidates_pruned"] == 2  # the model's default schedule
    off = {**CHAT, "best_of": 4, "seed": 0, "bon_prune_at": []}
    body = (await c.post("/v1/chat/completions", json=off)).json()
    assert body["usage"]["bonserve"]["candidates_pruned"] is None  # [] turns the default off
    assert engine.requests[-1].n == 4 and body["usage"]["completion_tokens"] == 4 * 6
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
    ):
        with pytest.raises(ValueError, match=r"default_bon|bon prune"):
            Settings(**bad)
