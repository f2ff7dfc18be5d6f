"""server/bon.py's pure parts: candidate assembly, scoring as candidates finish, ranking with
the length penalty, selection. The engine's stream and the reward model are named fakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from server.bon import BestOfN, Candidate, Ranked, rank_candidates, select
from server.errors import APIError
from server.models import ServedModel
from server.serving import PreparedRequest
from tests.server.fakes import FakeCompletion, FakeRewardScorer


def prepared(
    best_of: int, n: int = 1, messages: Any = None, prompt_text: str = "", max_tokens: int = 16
) -> PreparedRequest:
    return PreparedRequest(
        model=ServedModel(name="fake", engine=None),  # type: ignore[arg-type]
        engine=None,
        prompt_ids=[1],
        params=SimpleNamespace(n=best_of, max_tokens=max_tokens),
        n=n,
        request_id="req",
        messages=messages,
        prompt_text=prompt_text,
    )


async def fake_stream(*steps: list[FakeCompletion], log: list[str] | None = None) -> AsyncIterator[Any]:
    """An engine stream in DELTA mode: each step is one RequestOutput's increments, and the
    fake yields to the event loop between steps as a real engine awaiting its next step does."""
    for i, outputs in enumerate(steps):
        if i:
            await asyncio.sleep(0)
        if log is not None:
            log.append(f"step{i}")
        yield SimpleNamespace(outputs=outputs)


# --------------------------------------------------------------------------- ranking


def test_ties_break_by_candidate_index() -> None:
    assert rank_candidates([1.0, 2.0, 2.0, 1.0], ["stop"] * 4, 0.0) == [1, 2, 0, 3]


def test_length_penalty_demotes_only_truncated_candidates() -> None:
    rewards = [3.0, 2.0, 1.0]
    assert rank_candidates(rewards, ["length", "stop", "stop"], 0.0) == [0, 1, 2]
    assert rank_candidates(rewards, ["length", "stop", "stop"], 1.5) == [1, 0, 2]
    assert rank_candidates(rewards, ["length", "stop", "stop"], 10.0) == [1, 2, 0]


def test_rank_returns_the_rewards_that_ranked_and_sums_reward_tokens() -> None:
    """The reward a client gets is the value the order was made from (5 - 2 for the cut
    candidate), so the returned rewards always agree with the returned order."""
    candidates = [
        Candidate(0, finish_reason="length", reward=5.0, reward_tokens=7),
        Candidate(1, finish_reason="stop", reward=4.0, reward_tokens=3),
    ]
    ranked = BestOfN(FakeRewardScorer(), length_penalty=2.0).rank(candidates)
    assert ranked == Ranked(order=[1, 0], rewards=[3.0, 4.0], reward_tokens=10)


def test_rank_refuses_unscored_candidates() -> None:
    with pytest.raises(ValueError, match="candidate 1"):
        BestOfN(FakeRewardScorer()).rank([Candidate(0, reward=1.0), Candidate(1)])


# --------------------------------------------------------------------------- selection


def test_select_returns_top_n_best_first_with_rewards() -> None:
    outputs = ["a", "b", "c"]
    ranked = Ranked(order=[2, 0, 1], rewards=[0.5, 0.1, 0.9], reward_tokens=0)
    assert select(outputs, ranked, 2) == [("c", 0.9), ("a", 0.5)]


def test_select_without_ranking_keeps_sampling_order() -> None:
    assert select(["a", "b", "c"], None, 2) == [("a", None), ("b", None)]


# --------------------------------------------------------------------------- assembly


def test_candidate_assembles_increments() -> None:
    c = Candidate(0)
    c.extend(FakeCompletion(0, "Hel", [1, 2], None, logprobs=[{"x": 1}]))
    assert not c.finished
    c.extend(FakeCompletion(0, "lo", [3], None))  # no logprobs in this increment
    c.extend(FakeCompletion(0, "!", [4], "stop", logprobs=[{"y": 2}]))
    assert (c.text, c.token_ids, c.finish_reason, c.finished) == ("Hello!", [1, 2, 3, 4], "stop", True)
    assert c.logprobs == [{"x": 1}, {"y": 2}]


async def test_sample_and_score_scores_each_candidate_as_it_finishes() -> None:
    """Candidate 0 finishes in the first step: its scoring is under way before the second
    step arrives. Rewards are the fake's length of conversation + text."""
    log: list[str] = []
    scorer = FakeRewardScorer(calls=log)  # logs each scoring's request id as it starts
    stream = fake_stream(
        [FakeCompletion(0, "ab", [1], "stop"), FakeCompletion(1, "x", [1], None)],
        [FakeCompletion(1, "yz", [2, 3], "length")],
        log=log,
    )
    messages = [{"role": "user", "content": "hi"}]
    candidates, ranked = await BestOfN(scorer).run(prepared(2, messages=messages), stream)
    assert log == ["step0", "req-c0", "step1", "req-c1"]
    assert [(c.text, c.token_ids, c.finish_reason) for c in candidates] == [
        ("ab", [1], "stop"),
        ("xyz", [1, 2, 3], "length"),
    ]
    assert [c.reward for c in candidates] == [4.0, 5.0]  # len("hi") + len(text)
    assert ranked == Ranked(order=[1, 0], rewards=[4.0, 5.0], reward_tokens=9)


async def test_completions_score_prompt_text_plus_candidate() -> None:
    stream = fake_stream([FakeCompletion(0, "abc", [1], "stop"), FakeCompletion(1, "a", [1], "stop")])
    bon = BestOfN(FakeRewardScorer())
    candidates = await bon.sample_and_score(prepared(2, prompt_text="12345"), stream)
    assert [c.reward for c in candidates] == [8.0, 6.0]


async def test_unfinished_candidate_is_a_server_error() -> None:
    stream = fake_stream([FakeCompletion(0, "a", [1], "stop"), FakeCompletion(1, "b", [1], None)])
    with pytest.raises(APIError) as err:
        await BestOfN(FakeRewardScorer()).run(prepared(2), stream)
    assert err.value.status == 500 and "1 of 2" in err.value.message


async def test_a_failing_stream_cancels_scoring_in_flight() -> None:
    scorer = FakeRewardScorer(delay_s=60)

    async def dies() -> AsyncIterator[Any]:
        yield SimpleNamespace(outputs=[FakeCompletion(0, "a", [1], "stop")])
        raise APIError(503, "engine died")

    bon = BestOfN(scorer)
    with pytest.raises(APIError, match="engine died"):
        await bon.sample_and_score(prepared(2), dies())
    assert scorer.calls == []  # cancelled before the scoring task first ran


async def test_completions_prompts_are_scored_as_a_user_turn() -> None:
    """One reward-model input for both endpoints: a raw /v1/completions prompt becomes the
    user turn of the conversation the reward model scores."""
    scorer = FakeRewardScorer()
    seen: list[tuple[list[dict[str, str]], str]] = []
    original = scorer.conversation_ids

    def record(messages: list[dict[str, str]], response: str) -> list[int]:
        seen.append((messages, response))
        return original(messages, response)

    scorer.conversation_ids = record  # type: ignore[method-assign]
    prep = SimpleNamespace(messages=None, prompt_text="2 + 2 =", request_id="r")
    await BestOfN(scorer).score(prep, Candidate(0, text=" 4", finish_reason="stop"))  # type: ignore[arg-type]
    assert seen == [([{"role": "user", "content": "2 + 2 ="}], " 4")]
