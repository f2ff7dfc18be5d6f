"""One error type for the API, one builder of OpenAI's error envelope, and the OpenAPI
declaration of that envelope for routes (`documented_errors`)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from server.protocol import ErrorInfo, ErrorResponse


class APIError(Exception):
    """An error a client should see, with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.type, self.param, self.code = type, param, code
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        info = ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=info).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.envelope(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unavailable(message: str, retry_after_s: int = 5) -> APIError:
    return APIError(
        503,
        message,
        type="service_unavailable",
        code="engine_unavailable",
        headers={"Retry-After": str(retry_after_s)},
    )


_DESCRIPTIONS = {
    400: "Invalid request: bad JSON, an unknown or invalid parameter, a prompt over the context.",
    401: "Missing or wrong bearer key.",
    403: "The admin API is disabled (no --admin-key on this server).",
    404: "Unknown model or registry entry.",
    409: "Conflicts with the server's current models.",
    413: "Request body over the server's limit.",
    422: "The checkpoint cannot be served.",
    429: "Server at capacity (queue full); retry after Retry-After.",
    500: "Engine error.",
    503: "Unavailable right now (an engine starting or restarting, or no model manager); retry.",
    504: "Request exceeded the server's timeout.",
}


def documented_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route answers with. "default" documents
    the envelope for anything else (e.g. 405, an unexpected 500) and replaces FastAPI's 422 validation schema,
    which this server never sends (invalid requests are 400s)."""
    declared: dict[int | str, dict[str, Any]] = {
        s: {"model": ErrorResponse, "description": _DESCRIPTIONS[s]} for s in statuses
    }
    declared["default"] = {"model": ErrorResponse, "description": "Any other error, same envelope."}
    return declared
