"""Best-of-N over HTTP with named fake engines (reward = sequence length): defaults, order,
length penalty, usage accounting, streaming replay, and the /v1/rewards contract. The pure
parts of server/bon.py are unit-tested in tests/server/test_bon.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from server.admission import Admission
from server.app import build_app
from server.config import Settings
from server.engines import ManagedEngine
from server.models import ModelRouter, ServedModel
from server.rerankers import Rerankers
from server.reward import RewardScorer
from server.state import AppState
from tests.server.fakes import (
    FakeRecordingRewardLLM,
    FakeRewardLLM,
    FakeTwoStepLLM,
    FakeVaryingLLM,
)

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


@pytest.fixture
async def bon_client() -> AsyncIterator[Callable[..., Any]]:
    engines: list[ManagedEngine] = []

    async def make(policy: Any = None, reward: Any = None, **overrides: Any) -> httpx.AsyncClient:
        settings = Settings(**overrides)
        p = ManagedEngine("policy", lambda: policy or FakeVaryingLLM(), restart_backoff_s=0)
        r = ManagedEngine("reward", lambda: reward or FakeRewardLLM(), restart_backoff_s=0)
        for e in (p, r):
            await e.start()
            engines.append(e)
        router = ModelRouter()
        router.add(ServedModel(name="fake", engine=p))
        router.add(ServedModel(name="tuned", engine=p))
        state = AppState(
            settings=settings,
            router=router,
            engines={"policy": p, "reward": r},
            admission=Admission(8, 8, price_per_hour=settings.accelerator_price_per_hour),
            rerank=Rerankers.single(RewardScorer(r, "fake-rm")),
        )
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=build_app(settings, state)), base_url="http://t"
        )

    yield make
    for e in engines:
        await e.stop()


async def test_best_of_returns_top_n_best_first_with_rewards(bon_client: Callable[..., Any]) -> None:
    c = await bon_client()
    body = (await c.post("/v1/chat/completions", json={**CHAT, "n": 2, "best_of": 4})).json()
    texts = [ch["message"]["content"] for ch in body["choices"]]
    assert texts == ["w w w w", "w w w"]  # longest = highest fake reward
    rewards = [ch["reward"] for ch in body["choices"]]
    assert rewards[0] > rewards[1]
    usage = body["usage"]
    assert usage["completion_tokens"] == 1 + 2 + 3 + 4  # every decoded candidate is billed
    assert usage["bonserve"]["candidates"] == 4
    assert usage["bonserve"]["delivered_tokens"] == 4 + 3
    assert usage["bonserve"]["reward_model_tokens"] > 0


async def test_default_best_of_global_and_per_model(bon_client: Callable[..., Any]) -> None:
    policy = FakeVaryingLLM()
    c = await bon_client(policy=policy, default_best_of="2,tuned=6")
    await c.post("/v1/chat/completions", json=CHAT)
    await c.post("/v1/chat/completions", json={**CHAT, "model": "tuned"})
    await c.post("/v1/chat/completions", json={**CHAT, "model": "tuned", "best_of": 1})
    await c.post("/v1/chat/completions", json={**CHAT, "n": 3})
    assert [p.n for p in policy.requests] == [2, 6, 1, 3]


async def test_default_best_of_leaves_greedy_requests_alone(bon_client: Callable[..., Any]) -> None:
    """A server default must not turn a temperature-0 request into n identical candidates (which
    vLLM refuses); an explicit best_of at temperature 0 is a 400 naming best_of."""
    policy = FakeVaryingLLM()
    c = await bon_client(policy=policy, default_best_of="4")
    r = await c.post("/v1/chat/completions", json={**CHAT, "temperature": 0})
    assert r.status_code == 200, r.text
    assert [p.n for p in policy.requests] == [1]
    assert r.json()["usage"].get("bonserve", {}).get("candidates", 1) == 1
    r = await c.post("/v1/chat/completions", json={**CHAT, "temperature": 0, "best_of": 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == "best_of", r.text
    assert len(policy.requests) == 1


async def test_length_penalty_demotes_truncated(bon_client: Callable[..., Any]) -> None:
    policy = FakeVaryingLLM(finish_reasons=("stop", "stop", "length"))
    c = await bon_client(policy=policy, length_penalty=100)
    body = (await c.post("/v1/chat/completions", json={**CHAT, "best_of": 3})).json()
    assert body["choices"][0]["message"]["content"] == "w w"


async def test_bad_best_of_values(bon_client: Callable[..., Any]) -> None:
    c = await bon_client(max_best_of=8)
    for patch in ({"best_of": 9}, {"best_of": 0}, {"best_of": "x"}, {"n": 3, "best_of": 2}):
        r = await c.post("/v1/chat/completions", json={**CHAT, **patch})
        assert r.status_code == 400 and r.json()["error"]["param"] in ("best_of", None), r.text


async def test_streaming_best_of_replays_winner(bon_client: Callable[..., Any]) -> None:
    c = await bon_client()
    body = {**CHAT, "best_of": 3, "stream": True, "stream_options": {"include_usage": True}}
    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [ln[6:] async for ln in r.aiter_lines() if ln.startswith("data: ")]
    import json

    chunks = [json.loads(x) for x in lines[:-1]]
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
    assert text == "w w w"
    assert chunks[-1]["usage"]["bonserve"]["candidates"] == 3
    assert lines[-1] == "[DONE]"


async def test_rewards_endpoint(bon_client: Callable[..., Any]) -> None:
    c = await bon_client()
    items = [{"messages": CHAT["messages"], "response": r} for r in ("a", "abc")]
    body = (await c.post("/v1/rewards", json={"items": items})).json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][1]["reward"] - body["data"][0]["reward"] == 2.0
    assert body["model"] == "fake-rm"
    r = await c.post("/v1/rewards", json={"model": "other", "items": items})
    assert r.status_code == 404
    assert (await c.post("/v1/rewards", json={"items": []})).status_code == 400


async def test_candidates_are_scored_as_they_finish(bon_client: Callable[..., Any]) -> None:
    """The early candidate's scoring starts before the others are done decoding."""
    events: list[Any] = []
    c = await bon_client(policy=FakeTwoStepLLM(events=events), reward=FakeRecordingRewardLLM(events=events))
    body = (await c.post("/v1/chat/completions", json={**CHAT, "best_of": 3})).json()
    kinds = [e[0] if e[0] == "score" else f"step{e[1]}" for e in events]
    assert kinds[:3] == ["step1", "score", "step2"], events
    assert kinds.count("score") == 3
    texts = {ch["message"]["content"] for ch in body["choices"]}
    assert texts == {"long answer"}  # assembled from both increments, and the longer wins


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/chat/completions", {**CHAT, "best_of": 2}),
        ("/v1/rewards", {"items": [{"messages": CHAT["messages"], "response": "a"}]}),
    ],
)
async def test_reward_engine_death_is_503(
    bon_client: Callable[..., Any], path: str, body: dict[str, Any]
) -> None:
    c = await bon_client(reward=FakeRewardLLM(die_on_encode=True))
    r = await c.post(path, json=body)
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "engine_unavailable"
    assert err["message"] == "the reward engine died and is restarting; retry"


async def test_streamed_best_of_sends_keepalives_while_candidates_decode(
    bon_client: Callable[..., Any],
) -> None:
    """Headers at once, then keep-alives (blank lines) while the (slow, fake) candidates
    decode, then the winner; a proxy with an idle timeout sees traffic the whole time, and a
    client that strips each read and skips empty ones (vllm bench serve) sees only events."""
    from tests.server.fakes import FakeAsyncLLM

    c = await bon_client(policy=FakeAsyncLLM(delay_s=0.5), sse_keepalive_s=0.1)
    body = {**CHAT, "stream": True, "best_of": 3}
    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = (await r.aread()).decode()
    before, _, _ = text.partition("data:")
    assert before.strip() == "" and before.count("\n") >= 2, repr(text[:40])  # keep-alives first
    assert text.rstrip().endswith("data: [DONE]") and '"reward"' in text
    events = [e for e in text.split("\n\n") if e.strip()]
    assert all(e.strip().startswith("data: ") for e in events), events  # blank lines are not events


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_return_candidates_lists_every_scored_candidate(
    bon_client: Callable[..., Any], path: str
) -> None:
    policy = FakeVaryingLLM(finish_reasons=("stop", "stop", "stop", "length"))
    c = await bon_client(policy=policy, length_penalty=100)
    prompt = {"messages": CHAT["messages"]} if path.endswith("chat/completions") else {"prompt": "hello"}
    body = {"model": "fake", "max_tokens": 8, **prompt, "n": 2, "best_of": 4, "return_candidates": True}
    r = (await c.post(path, json=body)).json()
    candidates = r["candidates"]
    assert [x["rank"] for x in candidates] == [0, 1, 2, 3]
    assert [x["index"] for x in candidates] == [2, 1, 0, 3]  # longest wins; the cut one is penalised
    assert [x["choice_index"] for x in candidates] == [0, 1, None, None]
    assert [x["completion_tokens"] for x in candidates] == [3, 2, 1, 4]
    assert candidates[-1]["finish_reason"] == "length"
    rewards = [x["reward"] for x in candidates]
    assert rewards == sorted(rewards, reverse=True)
    choice_rewards = [ch["reward"] for ch in r["choices"]]
    assert choice_rewards == rewards[:2]  # the value that ranked is the one returned
    text_of = (lambda ch: ch["message"]["content"]) if "messages" in prompt else (lambda ch: ch["text"])
    assert [text_of(ch) for ch in r["choices"]] == [x["text"] for x in candidates[:2]]


async def test_return_candidates_is_opt_in_empty_without_ranking_and_refused_with_stream(
    bon_client: Callable[..., Any],
) -> None:
    c = await bon_client()
    assert "candidates" not in (await c.post("/v1/chat/completions", json={**CHAT, "best_of": 2})).json()
    same = await c.post("/v1/chat/completions", json={**CHAT, "n": 2, "return_candidates": True})
    assert same.json()["candidates"] == []  # best_of == n: nothing was scored
    streamed = await c.post(
        "/v1/chat/completions", json={**CHAT, "best_of": 2, "stream": True, "return_candidates": True}
    )
    assert streamed.status_code == 400
    assert streamed.json()["error"]["param"] == "return_candidates"


async def test_streamed_best_of_on_completions_replays_the_winners(bon_client: Callable[..., Any]) -> None:
    """A server default best_of applies to streamed completions too (load generators stream)."""
    import json

    c = await bon_client(default_best_of="3")
    body = {
        "model": "fake",
        "prompt": "hello",
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = [ln[6:] async for ln in r.aiter_lines() if ln.startswith("data: ")]
    chunks = [json.loads(x) for x in lines[:-1]]
    assert [ch["choices"][0]["text"] for ch in chunks if ch["choices"]] == ["w w w"]
    assert chunks[0]["choices"][0]["finish_reason"] == "stop" and chunks[0]["choices"][0]["reward"]
    assert chunks[-1]["usage"]["bonserve"]["candidates"] == 3 and lines[-1] == "[DONE]"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_streamed_best_of_continuous_usage_is_the_final_usage(
    bon_client: Callable[..., Any], path: str
) -> None:
    """vLLM's continuous_usage_stats (GuideLLM sends it) under Best-of-N: decoding is over
    when the winners replay, so every chunk carries the final usage."""
    import json

    c = await bon_client()
    prompt = {"messages": CHAT["messages"]} if "chat" in path else {"prompt": "hello"}
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = {
        "model": "fake",
        "max_tokens": 8,
        **prompt,
        "best_of": 3,
        "stream": True,
        "stream_options": options,
    }
    async with c.stream("POST", path, json=body) as r:
        chunks = [json.loads(ln[6:]) async for ln in r.aiter_lines() if ln.startswith("data: {")]
    usages = [ch["usage"] for ch in chunks]
    assert len(usages) >= 2 and all(u == usages[-1] for u in usages)
    assert usages[-1]["bonserve"]["candidates"] == 3
