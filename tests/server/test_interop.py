"""What vLLM clients and load generators send, over the named fake engine: vLLM's sampling
extras reach SamplingParams, the ones bonserve does not honour stay refused, and vLLM's
/tokenize and /detokenize answer in vLLM's shapes behind the API key. The real tools run
against a real server in tests/server/test_pages_e2e.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.server.conftest import assert_envelope
from tests.server.fakes import FakeAsyncLLM

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}

EXTRAS = {
    "ignore_eos": True,
    "min_tokens": 4,
    "stop_token_ids": [7, 9],
    "skip_special_tokens": False,
    "spaces_between_special_tokens": False,
    "include_stop_str_in_output": True,
}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_vllm_sampling_extras_reach_sampling_params(client_for: Callable[..., Any], path: str) -> None:
    engine = FakeAsyncLLM()
    c = await client_for(lambda: engine)
    body = {**CHAT, **EXTRAS} if "chat" in path else {"model": "fake", "prompt": "hi", **EXTRAS}
    r = await c.post(path, json=body)
    assert r.status_code == 200, r.text
    params = engine.requests[-1]
    for name, value in EXTRAS.items():
        assert getattr(params, name) == value, name


async def test_vllm_extras_default_to_vllms_defaults(client_for: Callable[..., Any]) -> None:
    engine = FakeAsyncLLM()
    c = await client_for(lambda: engine)
    assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
    p = engine.requests[-1]
    assert (p.ignore_eos, p.min_tokens, p.skip_special_tokens, p.include_stop_str_in_output) == (
        False,
        0,
        True,
        False,
    )


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"min_tokens": 9}, "min_tokens"),  # over max_tokens=8
        ({"min_tokens": -1}, "min_tokens"),
        ({"stop_token_ids": [5000]}, "stop_token_ids"),  # outside the fake's 1000-token vocabulary
        ({"use_beam_search": True}, "use_beam_search"),  # refused on purpose: see protocol.py
        ({"chat_template": "{{ messages }}"}, "chat_template"),
    ],
)
async def test_extras_bonserve_refuses(
    client_for: Callable[..., Any], extra: dict[str, Any], param: str
) -> None:
    c = await client_for()
    err = assert_envelope(await c.post("/v1/chat/completions", json={**CHAT, **extra}), 400)
    assert err["param"] == param, err


async def test_tokenize_prompt_and_messages_in_vllms_shape(client_for: Callable[..., Any]) -> None:
    c = await client_for()
    r = (await c.post("/tokenize", json={"model": "fake", "prompt": "abc", "return_token_strs": True})).json()
    assert r == {
        "count": 3,
        "max_model_len": 128,
        "tokens": [98, 99, 100],
        "token_strs": ["t98", "t99", "t100"],
    }
    chat = (await c.post("/tokenize", json={"messages": CHAT["messages"]})).json()  # no model: --model
    completion = (await c.post("/v1/chat/completions", json=CHAT)).json()
    assert chat["count"] == completion["usage"]["prompt_tokens"] and chat["token_strs"] is None
    detok = await c.post("/detokenize", json={"model": "fake", "tokens": [1, 2, 3]})
    assert detok.json() == {"prompt": "xxx"}


@pytest.mark.parametrize(
    "path,body,status,param",
    [
        ("/tokenize", {"model": "nope", "prompt": "a"}, 404, "model"),
        ("/tokenize", {"model": "fake"}, 400, "prompt"),
        ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 400, "prompt"),
        ("/tokenize", {"prompt": "a", "chat_template": "x"}, 400, "chat_template"),
        ("/detokenize", {"tokens": [5000]}, 400, "tokens"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens.0"),
    ],
)
async def test_tokenizer_errors_are_the_envelope(
    client_for: Callable[..., Any], path: str, body: dict[str, Any], status: int, param: str
) -> None:
    c = await client_for()
    assert assert_envelope(await c.post(path, json=body), status)["param"] == param


async def test_tokenizer_endpoints_need_the_api_key(client_for: Callable[..., Any]) -> None:
    c = await client_for(api_key="client-key")
    for path, body in (("/tokenize", {"prompt": "a"}), ("/detokenize", {"tokens": [1]})):
        assert_envelope(await c.post(path, json=body), 401, "invalid_api_key")
        ok = await c.post(path, json=body, headers={"Authorization": "Bearer client-key"})
        assert ok.status_code == 200, ok.text


async def test_guidellm_chat_body_streams_with_continuous_usage(client_for: Callable[..., Any]) -> None:
    """GuideLLM's chat body (its openai_http backend), as it sends it: vLLM's
    continuous_usage_stats puts the usage so far on every chunk."""
    import json

    c = await client_for()
    body = {
        "model": "fake",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "max_completion_tokens": 8,
        "stop": None,
        "ignore_eos": True,
    }
    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        chunks = [json.loads(ln[6:]) async for ln in r.aiter_lines() if ln.startswith("data: {")]
    assert chunks and all("usage" in ch and ch["usage"]["prompt_tokens"] > 0 for ch in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == max(ch["usage"]["completion_tokens"] for ch in chunks)
