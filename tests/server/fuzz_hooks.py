"""schemathesis hooks for the fuzz test: aim generated bodies at the served model, so the
fuzzer reaches generation and reward scoring instead of stopping at 404 unknown-model."""

from __future__ import annotations

import os
from typing import Any

import schemathesis


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict) and "model" in body and os.environ.get("FUZZ_MODEL"):
        body["model"] = os.environ["FUZZ_MODEL"]
    return body
