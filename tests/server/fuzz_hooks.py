"""schemathesis hooks for the fuzz tests: aim generated bodies at the served model, so the
fuzzer reaches generation and reward scoring instead of stopping at 404 unknown-model.

Environment (set by the test that runs schemathesis):
    FUZZ_MODEL          the served policy: every body's `model`
    FUZZ_REWARD_MODEL   the reward model: `model` of /v1/rewards and /admin/reward/promote,
                        and an aliases promotion's `reward_model` (unset: FUZZ_MODEL everywhere)
    FUZZ_API_KEY        with FUZZ_ADMIN_KEY: the bearer key of each request by its path (the
    FUZZ_ADMIN_KEY      admin key for /admin/*, the API key elsewhere), instead of one -H
    FUZZ_BEST_OF        make every other generation request Best-of-N (best_of this, n 1)
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import schemathesis

REWARD_PATHS = ("/v1/rewards", "/admin/reward/promote")
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
_turn = itertools.count()


def _path(context: Any) -> str:
    operation = getattr(context, "operation", None)
    return str(getattr(operation, "path", "") or "")


def _aim(path: str, body: Any) -> Any:
    """Point `model` (and `reward_model`) at what this server serves."""
    if not isinstance(body, dict):
        return body
    model, reward = os.environ.get("FUZZ_MODEL"), os.environ.get("FUZZ_REWARD_MODEL")
    if "model" in body and model:
        body["model"] = reward if reward and path in REWARD_PATHS else model
    if reward and body.get("reward_model") is not None:
        body["reward_model"] = reward
    return body


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    return _aim(_path(context), body)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Runs before every request of every phase (some phases generate without map_body)."""
    api_key, admin_key = os.environ.get("FUZZ_API_KEY"), os.environ.get("FUZZ_ADMIN_KEY")
    if not (api_key and admin_key):
        return  # the plain fuzz test: model injection by map_body, one -H for every request
    path = str(case.path)
    if isinstance(case.body, dict):
        case.body = _aim(path, case.body)
        best_of = os.environ.get("FUZZ_BEST_OF")
        if best_of and path in GENERATION_PATHS and "best_of" not in case.body and next(_turn) % 2 == 0:
            case.body["best_of"] = int(best_of)
            case.body["n"] = 1
    key = admin_key if path.startswith("/admin") else api_key
    if case.headers is None:
        case.headers = {}
    case.headers["Authorization"] = f"Bearer {key}"
