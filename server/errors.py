"""One error type for the API and one builder of OpenAI's error envelope."""

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
