"""Request schemas: OpenAI ranges, forbidden unknown fields, cross-field rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from server.protocol import ChatCompletionRequest, CompletionRequest

MSG = [{"role": "user", "content": "hi"}]


def chat(**kw: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **kw})


def test_minimal_chat_request_defaults() -> None:
    req = chat()
    assert req.n == 1 and req.best_of is None and req.stream is False
    assert req.requested_max_tokens is None


def test_greedy_best_of_is_refused_with_a_message_naming_best_of() -> None:
    with pytest.raises(ValidationError, match="best_of=4 needs sampling"):
        chat(best_of=4, temperature=0)
    assert chat(best_of=4, temperature=1.0, top_k=1).best_of == 4
    assert chat(best_of=1, temperature=0).best_of == 1


def test_max_completion_tokens_is_the_new_name() -> None:
    assert chat(max_completion_tokens=7).requested_max_tokens == 7
    assert chat(max_tokens=5).requested_max_tokens == 5


def test_content_parts_are_joined() -> None:
    req = chat(
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    )
    assert req.messages[0].text() == "ab"


@pytest.mark.parametrize(
    "bad",
    [
        {"n": 0},
        {"n": "two"},
        {"temperature": 3},
        {"top_p": 0},
        {"max_tokens": 0},
        {"presence_penalty": 5},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"top_logprobs": 3},
        {"logprobs": True, "top_logprobs": 21},
        {"stream_options": {"include_usage": True}},
        {"max_tokens": 5, "max_completion_tokens": 5},
        {"best_of": 1, "n": 2},
        {"best_of": 4, "temperature": 0},
        {"n": 2, "temperature": 0.0},
        {"unknown_field": 1},
        {"tools": []},
        {"messages": []},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        {"response_format": {"type": "json_schema"}},
        {"logit_bias": {"abc": 1}},
        {"logit_bias": {"5": 500}},
    ],
)
def test_bad_chat_requests_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        chat(**bad)


def test_completion_prompt_forms() -> None:
    assert CompletionRequest(model="m", prompt="x").prompt == "x"
    assert CompletionRequest(model="m", prompt=[1, 2]).prompt == [1, 2]
    for bad in ([], ["a", "b"]):
        with pytest.raises(ValidationError):
            CompletionRequest(model="m", prompt=bad)
