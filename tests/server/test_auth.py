"""Auth and body limits that fail closed (server/auth.py, the guard middleware, settings),
over the named fake engine of test_app_with_fake_engine.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import ValidationError

from server.auth import key_matches
from server.config import Settings
from tests.server.conftest import assert_envelope

BEARER = {"Authorization": "Bearer client-key"}
ADMIN = {"Authorization": "Bearer admin-key"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"api_key": ""}, "api_key is empty"),
        ({"admin_key": "   "}, "admin_key is empty"),
        ({"admin_key": " padded "}, "whitespace"),
        ({"api_key": "same", "admin_key": "same"}, "admin_key equals api_key"),
        ({"open_admin": True, "host": "0.0.0.0"}, "loopback"),
        ({"open_admin": True, "admin_key": "k"}, "choose one"),
    ],
)
def test_unsafe_key_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**kwargs)


def test_open_admin_is_allowed_on_loopback_only() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        assert Settings(open_admin=True, host=host).open_admin


def test_key_comparison_takes_any_characters() -> None:
    assert key_matches("k\u00e9y", "k\u00e9y")
    assert not key_matches("k\u00e9y", "key")
    assert not key_matches("\udcff", "key")  # undecodable bytes, as surrogate escapes
    assert not key_matches(None, "key")


async def test_admin_api_is_off_without_an_admin_key(client_for: Callable[..., Any]) -> None:
    """The configuration found open on main: an API key and no admin key."""
    c = await client_for(api_key="client-key")
    for method, path in (("GET", "/admin/state"), ("POST", "/admin/models/load")):
        for headers in ({}, BEARER):
            r = await c.request(method, path, headers=headers, json={"model": "x"})
            assert_envelope(r, 403, "admin_disabled")
    assert (await c.get("/v1/models", headers=BEARER)).status_code == 200


async def test_the_client_key_is_not_an_admin_key(client_for: Callable[..., Any]) -> None:
    c = await client_for(api_key="client-key", admin_key="admin-key")
    assert_envelope(await c.get("/admin/state", headers=BEARER), 401, "invalid_api_key")
    assert_envelope(await c.get("/admin/state"), 401, "invalid_api_key")
    # Past auth, this fake state has no model manager: 503, not an auth error.
    assert_envelope(await c.get("/admin/state", headers=ADMIN), 503)
    assert_envelope(await c.get("/v1/models", headers=ADMIN), 401, "invalid_api_key")


async def test_open_admin_passes_auth_on_loopback(client_for: Callable[..., Any]) -> None:
    c = await client_for(open_admin=True)
    assert_envelope(await c.get("/admin/state"), 503)


async def test_non_ascii_and_odd_bearer_tokens_get_401_not_500(client_for: Callable[..., Any]) -> None:
    c = await client_for(api_key="client-key", admin_key="admin-key")
    for raw in ("Bearer cl\u00e9".encode(), b"Bearer \xff\xfe", b"Bearer", b"Basic client-key", b"bearer  "):
        for path in ("/v1/models", "/admin/state"):
            assert_envelope(await c.get(path, headers={"Authorization": raw}), 401, "invalid_api_key")
    r = await c.get("/v1/models", headers={"Authorization": "bearer client-key"})  # scheme is case-free
    assert r.status_code == 200


async def _chunks(total: int, size: int = 64 << 10) -> AsyncIterator[bytes]:
    """A body sent without Content-Length (chunked): JSON padded to `total` bytes."""
    head = b'{"model": "fake", "messages": [{"role": "user", "content": "'
    tail = b'"}], "max_tokens": 2}'
    pad = total - len(head) - len(tail)
    yield head
    while pad > 0:
        yield b"x" * min(size, pad)
        pad -= size
    yield tail


async def test_chunked_body_over_the_cap_is_413(client_for: Callable[..., Any]) -> None:
    c = await client_for(max_body_bytes=1 << 16)
    r = await c.post("/v1/chat/completions", content=_chunks(1 << 18))
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_envelope(r, 413, "request_too_large")
    small = await c.post(
        "/v1/chat/completions", content=_chunks(200, size=16), headers={"Content-Type": "application/json"}
    )
    assert small.status_code == 200, small.text


async def test_auth_is_checked_before_the_body(client_for: Callable[..., Any]) -> None:
    """A wrong key with an oversized body gets 401: the guard refuses before reading it."""
    c = await client_for(api_key="client-key", max_body_bytes=1 << 16)
    r = await c.post("/v1/chat/completions", content=_chunks(1 << 18))
    assert_envelope(r, 401, "invalid_api_key")


async def test_openapi_declares_the_bearer_scheme(client_for: Callable[..., Any]) -> None:
    c = await client_for(api_key="client-key", admin_key="admin-key")
    spec = (await c.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s.get("type") == "http" and s.get("scheme") == "bearer" for s in schemes.values())
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert chat.get("security"), "the chat route does not declare the bearer scheme"
