"""The official `openai` client against a real `bonserve serve` on 127.0.0.1 (real vLLM engine)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
import pytest

from loadtests.servers import ServerProcess as RunningServer

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def client(server: RunningServer, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120, **kw)


def aclient(server: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


def test_models_health_version(server: RunningServer) -> None:
    models = client(server).models.list()
    assert [m.id for m in models.data] == [server.model]
    assert httpx.get(server.base_url + "/health").json() == {"status": "ok"}
    ready = server.ready()
    assert ready["ready"] is True and ready["engines"]["policy"]["state"] == "running"
    assert set(httpx.get(server.base_url + "/version").json()) == {"bonserve", "vllm"}


def test_sync_chat_greedy_answer_usage_and_logprobs(server: RunningServer) -> None:
    r = client(server).chat.completions.create(
        model=server.model,
        messages=FRANCE,
        temperature=0,
        max_tokens=24,
        logprobs=True,
        top_logprobs=3,
    )
    choice = r.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert abs(r.created - time.time()) < 300
    # usage counts exactly the generated tokens, one logprob entry each
    assert r.usage.completion_tokens == len(choice.logprobs.content)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens == 37  # SmolLM2 template with its default system prompt
    first = choice.logprobs.content[0]
    assert len(first.top_logprobs) == 3 and first.logprob <= 0
    assert first.top_logprobs[0].logprob >= first.top_logprobs[-1].logprob


def test_max_tokens_and_stop(server: RunningServer) -> None:
    c = client(server)
    r = c.chat.completions.create(model=server.model, messages=FRANCE, temperature=0, max_completion_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    r = c.chat.completions.create(
        model=server.model, messages=FRANCE, temperature=0, max_tokens=24, stop=[" Paris"]
    )
    assert r.choices[0].finish_reason == "stop"
    assert "Paris" not in r.choices[0].message.content


async def test_async_n_returns_distinct_choices(server: RunningServer) -> None:
    async with aclient(server) as c:
        r = await c.chat.completions.create(
            model=server.model,
            messages=[{"role": "user", "content": "Tell me a short story."}],
            n=4,
            temperature=1.0,
            max_tokens=24,
            seed=11,
        )
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    assert len({ch.message.content for ch in r.choices}) == 4
    assert r.usage.completion_tokens == r.usage.model_extra["bonserve"]["decoded_tokens"]


def test_streaming_matches_non_streaming(server: RunningServer) -> None:
    c = client(server)
    full = c.chat.completions.create(model=server.model, messages=FRANCE, temperature=0, max_tokens=24)
    stream = c.chat.completions.create(
        model=server.model,
        messages=FRANCE,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert len({ch.id for ch in chunks}) == 1


def test_streaming_n2_sends_both_choices(server: RunningServer) -> None:
    stream = client(server).chat.completions.create(
        model=server.model, messages=FRANCE, n=2, max_tokens=12, stream=True, seed=3
    )
    texts = ["", ""]
    finished = set()
    for ch in stream:
        for choice in ch.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1} and all(texts)


def test_seed_is_reproducible(server: RunningServer) -> None:
    c = client(server)
    msgs = [{"role": "user", "content": "Invent a name for a cat."}]
    a, b, other = (
        c.chat.completions.create(model=server.model, messages=msgs, temperature=1.0, max_tokens=16, seed=s)
        for s in (42, 42, 43)
    )
    assert a.choices[0].message.content == b.choices[0].message.content
    assert other.choices[0].message.content != a.choices[0].message.content


def test_seeded_burst_does_not_kill_engine(server: RunningServer) -> None:
    """The CPU-engine crash from the brief: many concurrent seeded n>1 requests."""

    async def burst() -> list[Any]:
        async with aclient(server) as c:
            return await asyncio.gather(
                *(
                    c.chat.completions.create(
                        model=server.model,
                        n=4,
                        seed=i,
                        temperature=0.8,
                        max_tokens=16,
                        messages=[{"role": "user", "content": f"What is {i} + {i + 7}?"}],
                    )
                    for i in range(24)
                )
            )

    results = asyncio.run(burst())
    assert all(len(r.choices) == 4 for r in results)
    assert server.ready()["engines"]["policy"]["restarts"] == 0


def test_json_modes(server: RunningServer) -> None:
    c = client(server)
    r = c.chat.completions.create(
        model=server.model,
        temperature=0,
        max_tokens=48,
        messages=[{"role": "user", "content": "Give me a JSON object with a key 'city'."}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    r = c.chat.completions.create(
        model=server.model,
        temperature=0,
        max_tokens=32,
        messages=[{"role": "user", "content": "What is 2 + 3? Answer in JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "sum", "schema": schema, "strict": True},
        },
    )
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"answer"} and isinstance(data["answer"], int)


def test_completions_echo_logprobs_and_stream(server: RunningServer) -> None:
    c = client(server)
    r = c.completions.create(
        model=server.model,
        prompt="The capital of France is",
        max_tokens=4,
        temperature=0,
        logprobs=2,
        echo=True,
    )
    text = r.choices[0].text
    assert text.startswith("The capital of France is") and "Paris" in text
    assert len(r.choices[0].logprobs.tokens) == r.usage.completion_tokens == 4
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(
            model=server.model, prompt="The capital of France is", max_tokens=4, temperature=0, stream=True
        )
        if ch.choices
    )
    assert text == "The capital of France is" + streamed


BAD_REQUESTS: list[tuple[dict[str, Any], int]] = [
    ({"n": 1000}, 400),
    ({"n": "four"}, 400),
    ({"max_tokens": 100000}, 400),
    ({"max_tokens": 2040, "messages": [{"role": "user", "content": "word " * 100}]}, 400),
    ({"messages": [{"role": "user", "content": "word " * 3000}]}, 400),
    ({"model": "no-such-model"}, 404),
    ({"messages": []}, 400),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400),
    ({"temperature": -1}, 400),
    ({"frobnicate": True}, 400),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400),
    ({"best_of": 4}, 400),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "bogus"}},
            }
        },
        400,
    ),
]


@pytest.mark.parametrize("patch,status", BAD_REQUESTS)
def test_bad_input_gets_envelope_and_server_keeps_serving(
    server: RunningServer, patch: dict[str, Any], status: int
) -> None:
    body = {"model": server.model, "messages": FRANCE, "max_tokens": 4, **patch}
    r = httpx.post(server.v1 + "/chat/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    ok = client(server).chat.completions.create(model=server.model, messages=FRANCE, max_tokens=2)
    assert ok.choices[0].message.content


def test_openai_client_raises_typed_errors(server: RunningServer) -> None:
    c = client(server)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=FRANCE)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model=server.model, messages=FRANCE, n=99)
    assert info.value.body["param"] == "n"


def test_malformed_json_body(server: RunningServer) -> None:
    for raw in (b"{", b"[]", b"null", b'{"model": 1}', "\u00ff".encode("latin-1")):
        r = httpx.post(
            server.v1 + "/chat/completions", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, (raw, r.text)


def test_client_disconnect_aborts_generation(server: RunningServer) -> None:
    # logit_bias forbids <|im_end|> (id 2) so the generation surely outlives the client.
    body = {
        "model": server.model,
        "max_tokens": 1500,
        "stream": True,
        "logit_bias": {"2": -100},
        "messages": [{"role": "user", "content": "Write a very long essay about rivers."}],
    }
    with httpx.stream("POST", server.v1 + "/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if '"content"' in line and '"content":""' not in line:
                break  # first token arrived; leave
    body["stream"] = False  # and a non-streaming one, cancelled by the client timeout
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.v1 + "/chat/completions", json=body, timeout=1.0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server.ready()["engines"]["policy"]["unfinished_requests"] == 0:
            return
        time.sleep(0.2)
    pytest.fail(f"engine still has unfinished requests: {server.ready()}")
