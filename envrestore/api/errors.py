"""Every error the API answers is `{"error": {"code", "message"}}` with a stable code.

Codes follow the CLI's (`cli/errors.py`): not_found 404, bad_input 422,
conflict 409, refused 409, unavailable 503, plus the HTTP layer's own
(unauthorized 401, forbidden 403, rate_limited 429, method_not_allowed 405,
not_acceptable 406, internal 500). A message is the error's own, already
cleaned of control characters and bounded (`pipelines.errors`); an
unexpected exception is logged with its traceback and answered with a
fixed message, so nothing internal or secret reaches a client.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from envrestore.pipelines.errors import (
    BadInput,
    Conflict,
    EnvrestoreError,
    IntegrityError,
    NotFound,
    Refused,
    TransientError,
    UnsafeInput,
)
from envrestore.pipelines.text import clean_text

log = structlog.get_logger(__name__)

#: Error family → (HTTP status, stable code); the first match wins.
ERROR_STATUS: list[tuple[type[EnvrestoreError], int, str]] = [
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (Refused, 409, "refused"),
    (BadInput, 422, "bad_input"),
    (UnsafeInput, 422, "bad_input"),
    (IntegrityError, 422, "bad_input"),
    (TransientError, 503, "unavailable"),
]

_HTTP_CODES = {
    400: "bad_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "bad_input",
    429: "rate_limited",
}


class ApiError(Exception):
    """An answer decided by the HTTP layer (auth, scopes, preconditions)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def status_for(exc: EnvrestoreError) -> tuple[int, str]:
    for family, status, code in ERROR_STATUS:
        if isinstance(exc, family):
            return status, code
    return 422, "bad_input" if exc.exit_code == 2 else "error"


def _validation_message(exc: RequestValidationError) -> str:
    """Which fields were wrong and why; never the values (they may be secrets)."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return clean_text("; ".join(parts) or "the request is not valid", 500)


def install(app: FastAPI) -> None:
    """The handlers that turn every failure into the one error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(EnvrestoreError)
    async def _envrestore_error(request: Request, exc: EnvrestoreError) -> JSONResponse:
        status, code = status_for(exc)
        if status == 503:
            log.warning("api.unavailable", path=request.url.path, error=exc.message)
        elif code == "error":
            status = 500
            log.error("api.failed", path=request.url.path, error=exc.message)
        return error_response(status, code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "bad_input", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, clean_text(message, 500), headers)

    @app.exception_handler(asyncpg.DataError)
    async def _data_error(request: Request, exc: asyncpg.DataError) -> JSONResponse:
        # A value PostgreSQL cannot hold (a NUL, an out-of-range number) is the
        # client's input, never the server's failure (the NUL guard in deps.py
        # refuses most of them before they reach the ledger).
        log.info("api.data_error", path=request.url.path, sqlstate=exc.sqlstate)
        return error_response(
            422, "bad_input", "a value in the request is not valid text or number"
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("api.unexpected", path=request.url.path, method=request.method)
        return error_response(500, "internal", "internal error; the API's log has the details")


# ------------------------------------------------- the errors in the OpenAPI document


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable: not_found, conflict, bad_input, ...")
    message: str = Field(description="For people; never a stack trace or a secret")


class ErrorBody(BaseModel):
    """What every error answers (the document says so, so clients may rely on it)."""

    error: ErrorDetail


_DOCUMENTED = {
    400: "The body is not JSON",
    401: "No token, or an unknown, revoked or expired one",
    403: "The token lacks the action this needs",
    404: "Not found, or outside the token's sites",
    409: "Conflict: refused by policy, or the Idempotency-Key was used for another request",
    422: "Bad input",
    429: "Too many failed authentications from this client",
    503: "A service (ledger, broker, object store) is unavailable",
}
#: Every route's error answers (found missing by the schemathesis run).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _DOCUMENTED.items()
}
