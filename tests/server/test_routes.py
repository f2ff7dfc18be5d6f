"""The OpenAPI document declares what the routes answer: OpenAI's error envelope for every
error status a route can return, and JSON or server-sent events for the streaming routes."""

from __future__ import annotations

from typing import Any

import pytest

from server.app import build_app
from server.config import Settings
from tests.server.conftest import make_state
from tests.server.fakes import FakeAsyncLLM

ERROR_REF = "#/components/schemas/ErrorResponse"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    settings = Settings()
    return build_app(settings, make_state(settings, FakeAsyncLLM)).openapi()


def responses(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    declared: dict[str, Any] = spec["paths"][path][method]["responses"]
    return declared


def test_error_envelope_schema_matches_openai(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert schemas["ErrorResponse"]["required"] == ["error"]
    info = schemas[schemas["ErrorResponse"]["properties"]["error"]["$ref"].rsplit("/", 1)[-1]]
    assert set(info["properties"]) == {"message", "type", "param", "code"}
    assert set(info["required"]) == {"message", "type"}


@pytest.mark.parametrize(
    "method,path,statuses",
    [
        ("post", "/v1/chat/completions", {"400", "401", "404", "413", "429", "500", "503", "504"}),
        ("post", "/v1/completions", {"400", "401", "404", "413", "429", "500", "503", "504"}),
        ("post", "/v1/rewards", {"400", "401", "404", "413", "429", "503"}),
        ("get", "/v1/models", {"401"}),
        ("post", "/tokenize", {"400", "401", "404", "413", "503"}),
        ("post", "/detokenize", {"400", "401", "404", "413", "503"}),
        ("post", "/admin/models/load", {"400", "401", "403", "404", "409", "413", "422", "503"}),
        ("post", "/admin/aliases/promote", {"400", "401", "403", "404", "409", "413", "422", "503"}),
        ("post", "/admin/reward/promote", {"400", "401", "403", "404", "409", "413", "422", "503"}),
        ("post", "/admin/models/unload", {"400", "401", "403", "404", "409", "413", "503"}),
    ],
)
def test_routes_declare_their_errors_as_the_envelope(
    spec: dict[str, Any], method: str, path: str, statuses: set[str]
) -> None:
    declared = responses(spec, method, path)
    assert statuses | {"default"} <= set(declared)
    for status in [*statuses, "default"]:
        assert declared[status]["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, status
        assert declared[status]["description"]


def test_no_fastapi_422_schema_the_server_never_sends(spec: dict[str, Any]) -> None:
    """Invalid requests are 400s in the envelope; FastAPI's HTTPValidationError is not used."""
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/rewards"):
        assert "422" not in responses(spec, "post", path)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


@pytest.mark.parametrize(
    "path,model",
    [("/v1/chat/completions", "ChatCompletionResponse"), ("/v1/completions", "CompletionResponse")],
)
def test_streaming_routes_declare_json_and_event_stream(spec: dict[str, Any], path: str, model: str) -> None:
    content = responses(spec, "post", path)["200"]["content"]
    assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
    assert "text/event-stream" in content


def test_ready_declares_its_503(spec: dict[str, Any]) -> None:
    assert "503" in responses(spec, "get", "/ready")
