"""Who may call what, decided before a request body is read.

    /v1/*      the API key (`--api-key`); unset: open, for a local server; so are vLLM's
               /tokenize and /detokenize, which read the served tokenizer
    /admin/*   the admin key (`--admin-key`); unset: the admin API is OFF (403), unless
               the operator passes `--open-admin` on a loopback bind (checked at start-up)
    the rest   open: /health, /ready, /metrics, the API docs, the playground page and its
               static files (the page sends the key its user types; it holds no data)

The admin API loads, unloads and promotes models: leaving it open because a key was not set
is the failure this module exists to prevent, so it fails closed. Settings refuse empty keys
and an admin key equal to the API key (server/config.py).

The check runs twice on purpose: in `GuardMiddleware` (server/app.py), before the body is
read, so an unauthenticated client cannot make the server buffer and parse a large body; and
in the routes' dependencies (server/deps.py), which is what puts the bearer scheme into the
OpenAPI document so `/docs` can authorise. Both call `refusal`.
"""

from __future__ import annotations

import secrets

from server.config import Settings
from server.errors import APIError

API_PREFIX = "/v1"
API_PATHS = ("/tokenize", "/detokenize")  # vLLM's paths, outside /v1
ADMIN_PREFIX = "/admin"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_matches(token: str | None, expected: str) -> bool:
    """Constant-time comparison for tokens of any characters: `compare_digest` raises on
    non-ASCII *strings*, so both sides are compared as UTF-8 bytes (a header that is not
    valid text is a wrong key, never a 500)."""
    if token is None:
        return False
    return secrets.compare_digest(token.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def _unauthorized(what: str) -> APIError:
    return APIError(
        401,
        f"Invalid or missing {what} key: send 'Authorization: Bearer <key>'.",
        type="authentication_error",
        code="invalid_api_key",
    )


def admin_disabled() -> APIError:
    return APIError(
        403,
        "The admin API is disabled on this server: start it with --admin-key "
        "(or --open-admin on a loopback address).",
        type="permission_error",
        code="admin_disabled",
    )


def area_of(path: str) -> str | None:
    """'api', 'admin' or None (open) for a request path."""
    if path == API_PREFIX or path.startswith(API_PREFIX + "/") or path in API_PATHS:
        return "api"
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        return "admin"
    return None


def refusal(area: str | None, authorization: str | None, settings: Settings) -> APIError | None:
    """The error to answer with, or None if the request may proceed."""
    token = bearer_token(authorization)
    if area == "api":
        if settings.api_key is not None and not key_matches(token, settings.api_key):
            return _unauthorized("API")
    elif area == "admin":
        if settings.admin_key is not None:
            if not key_matches(token, settings.admin_key):
                return _unauthorized("admin")
        elif not settings.open_admin:
            return admin_disabled()
    return None
