"""Best-of-N selectors (`bon_selector`, server/selectors.py): each is checked against a
reference written here from its definition (not the server's helpers), as pure functions and
over HTTP with named fakes. `majority` and `logprob` must rank without a reward model;
`reward` refuses to; an unknown selector is a 400 in the OpenAI envelope."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from server.admission import Admission
from server.app import build_app
from server.bon import BestOfN, Candidate
from server.config import Settings
from server.engines import ManagedEngine
from server.models import ModelRouter, ServedModel
from server.rerankers import Rerankers
from server.reward import RewardScorer
from server.selectors import majority_order, normalise_answer
from server.state import AppState
from tests.server.conftest import assert_envelope
from tests.server.fakes import FakeAsyncLLM, FakeCompletion, FakeRewardLLM

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 8}

# ------------------------------------------------------------------------------- references


def ref_majority(texts: list[str], rewards: list[float] | None, by_reward: bool) -> int:
    """The candidate the majority selectors return first, from their definition: the most
    frequent answer wins; ties between answers go to the higher best reward when scored,
    else to the answer seen first; the representative is the best-rewarded sample of the
    answer (reward+majority) or its first sample."""
    answers = [normalise_answer(t) for t in texts]
    counts = Counter(answers)
    top = max(counts.values())
    tied = [a for a in dict.fromkeys(answers) if counts[a] == top]  # in order of first sight
    if rewards is not None:
        best = max(max(r for r, a in zip(rewards, answers, strict=True) if a == t) for t in tied)
        tied = [t for t in tied if max(r for r, a in zip(rewards, answers, strict=True) if a == t) == best]
    winner = tied[0]
    members = [i for i, a in enumerate(answers) if a == winner]
    if by_reward and rewards is not None:
        return max(members, key=lambda i: (rewards[i], -i))
    return members[0]


def ref_logprob(per_token: list[list[float]]) -> int:
    """The highest mean token logprob; the lower index on ties; no tokens ranks last."""
    best, best_i = -math.inf, 0
    for i, lps in enumerate(per_token):
        mean = sum(lps) / len(lps) if lps else -math.inf
        if mean > best:
            best, best_i = mean, i
    return best_i


def lp(value: float) -> SimpleNamespace:
    return SimpleNamespace(logprob=value)


def candidate(i: int, text: str, lps: list[float], reward: float | None = None) -> Candidate:
    token_ids = [10 + k for k in range(len(lps))]
    return Candidate(
        i,
        text=text,
        token_ids=token_ids,
        logprobs=[{t: lp(v)} for t, v in zip(token_ids, lps, strict=True)],
        finish_reason="stop",
        reward=reward,
    )


# ------------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("The answer is 47.", "47"),
        ("47.0", "47"),
        ("so 1,234 apples", "1234"),
        ("from 3 to -2.5", "-2.5"),
        ("  Hello\n  World ", "hello world"),
    ],
)
def test_answers_normalise_to_the_last_number_else_the_text(text: str, answer: str) -> None:
    assert normalise_answer(text) == answer


def test_majority_and_logprob_match_the_references_on_random_candidates() -> None:
    rng = random.Random(0)
    for _ in range(300):
        k = rng.randint(1, 7)
        texts = [f"so it is {rng.choice(['3', '4', '5', '4.0'])}" for _ in range(k)]
        rewards = [float(rng.randint(0, 3)) for _ in range(k)]  # small range: ties happen
        lps = [[-rng.choice([0.5, 1.0, 2.0]) for _ in range(rng.randint(0, 3))] for _ in range(k)]
        unscored = [candidate(i, t, p) for i, (t, p) in enumerate(zip(texts, lps, strict=True))]
        scored = [candidate(i, t, p, r) for i, (t, p, r) in enumerate(zip(texts, lps, rewards, strict=True))]

        majority = BestOfN(None, selector="majority").rank(unscored)
        assert majority.order[0] == ref_majority(texts, None, by_reward=False)
        assert majority.rewards == [None] * k and sorted(majority.order) == list(range(k))
        counts = Counter(normalise_answer(t) for t in texts)
        assert majority.scores == [counts[normalise_answer(t)] / k for t in texts]

        ranked = BestOfN(None, selector="logprob").rank(unscored)
        assert ranked.order[0] == ref_logprob(lps) and sorted(ranked.order) == list(range(k))

        scorer: Any = object()  # never called: rank() only reads the candidates' rewards
        both = BestOfN(scorer, selector="reward+majority").rank(scored)
        assert both.order[0] == ref_majority(texts, rewards, by_reward=True)
        assert both.rewards == rewards


def test_majority_keeps_each_answer_together_best_answer_first() -> None:
    answers = ["b", "a", "b", "c", "a", "b"]
    order = majority_order(answers)
    assert order == [0, 2, 5, 1, 4, 3]  # b (3 votes), then a (2), then c (1)


def test_reward_selectors_refuse_unscored_candidates_and_no_reward_model() -> None:
    with pytest.raises(ValueError, match="needs a reward model"):
        BestOfN(None, selector="reward")
    with pytest.raises(ValueError, match="needs a reward model"):
        BestOfN(None, selector="reward+majority")
    with pytest.raises(ValueError, match="unknown"):
        BestOfN(None, selector="best")
    scorer: Any = object()
    with pytest.raises(ValueError, match="not scored"):
        BestOfN(scorer, selector="reward").rank([candidate(0, "1", [-1.0])])


# ------------------------------------------------------------------------------- over HTTP


@dataclass
class FakeAnswersLLM(FakeAsyncLLM):
    """Candidate i answers `answers[i]`; with logprobs asked (SamplingParams.logprobs set),
    each token of candidate i has logprob `token_logprobs[i]`."""

    answers: tuple[str, ...] = ("4", "5", "4", "6")
    token_logprobs: tuple[float, ...] = (-2.0, -0.1, -1.0, -3.0)
    seen: list[Any] = field(default_factory=list)

    async def generate(
        self, prompt: Any, params: Any, request_id: str, lora_request: Any = None
    ) -> AsyncIterator[Any]:
        self.seen.append(params)
        outs = []
        for i in range(params.n):
            text = f"it is {self.answers[i % len(self.answers)]}"
            ids = [5, 6, 7]
            logprobs = None
            if params.logprobs is not None:
                value = self.token_logprobs[i % len(self.token_logprobs)]
                logprobs = [{t: SimpleNamespace(logprob=value, rank=1, decoded_token="x")} for t in ids]
            outs.append(FakeCompletion(i, text, ids, "stop", logprobs))
        yield SimpleNamespace(outputs=outs, finished=True)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """A server on FakeAnswersLLM, with a length-based fake reward model or none."""
    engines: list[ManagedEngine] = []

    async def make(policy: Any = None, *, reward: bool = False, **overrides: Any) -> httpx.AsyncClient:
        settings = Settings(**overrides)
        p = ManagedEngine("policy", lambda: policy or FakeAnswersLLM(), restart_backoff_s=0)
        group = {"policy": p}
        rerank = Rerankers()
        if reward:
            r = ManagedEngine("reward", FakeRewardLLM, restart_backoff_s=0)
            group["reward"] = r
            rerank = Rerankers.single(RewardScorer(r, "fake-rm"))
        for e in group.values():
            await e.start()
            engines.append(e)
        router = ModelRouter()
        router.add(ServedModel(name="fake", engine=p))
        state = AppState(
            settings=settings,
            router=router,
            engines=group,
            admission=Admission(8, 8, price_per_hour=settings.accelerator_price_per_hour),
            rerank=rerank,
        )
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=build_app(settings, state)), base_url="http://t"
        )

    yield make
    for e in engines:
        await e.stop()


async def test_majority_needs_no_reward_model(serve: Callable[..., Any]) -> None:
    c = await serve()
    body = {**CHAT, "best_of": 4, "bon_selector": "majority", "return_candidates": True}
    for path, payload in (
        ("/v1/chat/completions", body),
        ("/v1/completions", {**{k: v for k, v in body.items() if k != "messages"}, "prompt": "2+2?"}),
    ):
        r = await c.post(path, json=payload)
        assert r.status_code == 200, r.text
        out = r.json()
        choice = out["choices"][0]
        assert (choice.get("message") or {}).get("content", choice.get("text")) == "it is 4"
        assert out["usage"]["bonserve"]["selector"] == "majority"
        assert out["usage"]["bonserve"]["reward_model"] is None
        assert out["usage"]["bonserve"]["reward_model_tokens"] == 0
        cands = out["candidates"]
        assert [c_["index"] for c_ in cands][:2] == [0, 2]  # the winning answer's samples first
        assert all(c_["reward"] is None for c_ in cands)
        assert [c_["score"] for c_ in sorted(cands, key=lambda c_: c_["index"])] == [0.5, 0.25, 0.5, 0.25]
        assert cands[0]["answer"] == "4"


async def test_logprob_needs_no_reward_model_and_returns_logprobs_only_if_asked(
    serve: Callable[..., Any],
) -> None:
    policy = FakeAnswersLLM()
    c = await serve(policy)
    r = await c.post("/v1/chat/completions", json={**CHAT, "best_of": 4, "bon_selector": "logprob"})
    assert r.status_code == 200, r.text
    out = r.json()
    expected = ref_logprob([[v] * 3 for v in policy.token_logprobs])
    assert out["choices"][0]["message"]["content"] == f"it is {policy.answers[expected]}"
    assert out["choices"][0].get("logprobs") is None  # asked for ranking, not for the client
    assert policy.seen[-1].logprobs == 0  # the engine was asked for the sampled tokens' logprobs
    assert out["usage"]["bonserve"]["selector"] == "logprob"


async def test_reward_selectors_without_a_reward_model_are_400(serve: Callable[..., Any]) -> None:
    c = await serve()
    for selector in (None, "reward", "reward+majority"):
        body = {**CHAT, "best_of": 4} | ({"bon_selector": selector} if selector else {})
        err = assert_envelope(await c.post("/v1/chat/completions", json=body), 400)
        assert err["param"] == "best_of" and "majority" in err["message"]


async def test_reward_selectors_rank_with_the_reward_model(serve: Callable[..., Any]) -> None:
    # answers 4 and 5 tie on votes; the (length) reward prefers "it is 55", so 5 wins
    policy = FakeAnswersLLM(answers=("4", "55", "4", "55"))
    c = await serve(policy, reward=True)
    body = {**CHAT, "best_of": 4, "return_candidates": True}
    default = (await c.post("/v1/chat/completions", json=body)).json()
    assert default["usage"]["bonserve"]["selector"] == "reward"
    assert default["usage"]["bonserve"]["reward_model"] == "fake-rm"
    assert default["choices"][0]["message"]["content"] == "it is 55"
    both = (await c.post("/v1/chat/completions", json={**body, "bon_selector": "reward+majority"})).json()
    assert both["choices"][0]["message"]["content"] == "it is 55"
    assert both["usage"]["bonserve"]["selector"] == "reward+majority"
    assert all(cand["reward"] is not None for cand in both["candidates"])


@pytest.mark.parametrize("selector", ["best", "REWARD", "", 3, None])
async def test_invalid_selectors_are_400_in_the_envelope(serve: Callable[..., Any], selector: Any) -> None:
    c = await serve(reward=True)
    r = await c.post("/v1/chat/completions", json={**CHAT, "best_of": 2, "bon_selector": selector})
    if selector is None:  # null is the default
        assert r.status_code == 200, r.text
        return
    err = assert_envelope(r, 400)
    assert err["param"] == "bon_selector"


async def test_majority_streams_and_returns_the_next_answers_for_n_above_1(
    serve: Callable[..., Any],
) -> None:
    c = await serve(FakeAnswersLLM(answers=("7", "8", "7", "9", "8", "7")))
    body = {**CHAT, "n": 2, "best_of": 6, "bon_selector": "majority"}
    out = (await c.post("/v1/chat/completions", json=body)).json()
    # order: 7 (indices 0, 2, 5), then 8 (1, 4), then 9: the first two are both 7s
    assert [ch["message"]["content"] for ch in out["choices"]] == ["it is 7", "it is 7"]
    text = ""
    async with c.stream("POST", "/v1/chat/completions", json={**body, "n": 1, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                for ch in json.loads(line[len("data: ") :])["choices"]:
                    text += ch["delta"].get("content") or ""
    assert text == "it is 7"
