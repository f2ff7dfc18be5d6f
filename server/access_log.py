"""Request ids and one structured JSON access-log line per request (pure ASGI, so streaming
responses and disconnect detection are untouched)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics

logger = logging.getLogger("bonserve.access")
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class AccessLogMiddleware:
    """Honours a client's `X-Request-Id` (if sane), makes one otherwise, echoes it on the
    response, and logs method, path, status and latency as JSON. Handlers can add fields
    (served model, best_of, tokens) through `scope["state"]["access_log"]`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
        extra: dict[str, object] = {}
        scope.setdefault("state", {})["access_log"] = extra
        scope["state"]["request_id"] = request_id
        status = 500
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            latency = time.perf_counter() - t0
            if scope.get("path") in GENERATION_PATHS:
                model, mode = str(extra.get("model_label", "unknown")), str(extra.get("mode", "single"))
                metrics.REQUESTS.labels(model, mode, str(status)).inc()
                if status == 200:  # error latencies would distort the serving percentiles
                    metrics.E2E.labels(model, mode).observe(latency)
            if scope.get("path") not in ("/health", "/ready", "/metrics"):
                logger.info(
                    json.dumps(
                        {
                            "request_id": request_id,
                            "method": scope.get("method"),
                            "path": scope.get("path"),
                            "status": status,
                            "latency_s": round(latency, 4),
                            **extra,
                        }
                    )
                )
