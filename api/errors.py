"""Errors: one envelope for every failure, ``{"error": {"message", "type", "param", "code"}}``.

The OpenAI SDK reads ``body["error"]`` and exposes ``code``/``param``/``type`` on its exceptions,
and it retries 408/409/429/5xx unless the response says ``x-should-retry: false``. So state
conflicts (409) always carry that header, bad input is a 400 (never FastAPI's 422 ``detail``),
and an unexpected failure is a plain 500 envelope with no stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import (
    DataError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.jsontext import UnstorableText

log = logging.getLogger(__name__)

NO_RETRY = {"x-should-retry": "false"}
# Seconds a client is asked to wait while the database is unreachable (a restart takes a few).
RETRY_AFTER_S = 5


class ErrorBody(BaseModel):
    message: str = Field(description="Human-readable explanation.")
    type: str = Field(description="Error class, e.g. invalid_request_error.")
    param: str | None = Field(None, description="The request field at fault, if any.")
    code: str | None = Field(None, description="Machine-readable error code.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    status_code = 400
    type = "invalid_request_error"
    default_code: str | None = None
    default_headers: Mapping[str, str] = {}

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = {**self.default_headers, **(headers or {})}

    def response(self) -> JSONResponse:
        return error_response(
            self.status_code,
            self.message,
            type=self.type,
            param=self.param,
            code=self.code,
            headers=self.headers,
        )


class BadRequest(ApiError):
    status_code = 400


class Unauthorized(ApiError):
    status_code = 401
    default_code = "invalid_api_key"
    default_headers = {"www-authenticate": "Bearer"}


class Forbidden(ApiError):
    status_code = 403
    type = "permission_error"
    default_code = "insufficient_permissions"


class NotFound(ApiError):
    status_code = 404
    default_code = "not_found"


class Conflict(ApiError):
    """A state conflict the client cannot fix by retrying (the SDK retries 409 otherwise)."""

    status_code = 409
    default_headers = NO_RETRY


class PayloadTooLarge(ApiError):
    status_code = 413
    default_code = "request_too_large"


class ServiceUnavailable(ApiError):
    """A dependency (the database) is down: retry later. The SDK retries 503s, honouring
    ``Retry-After``."""

    status_code = 503
    type = "server_error"
    default_code = "service_unavailable"
    default_headers = {"retry-after": str(RETRY_AFTER_S)}


# Errors that mean the database cannot be reached right now (server down or restarting, network,
# pool exhausted), as opposed to a bad statement: the request may succeed on a retry.
DATABASE_DOWN: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeout,
)


def error_response(
    status_code: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status_code, headers=dict(headers or {}))


def param_path(loc: Sequence[Any]) -> str | None:
    """``("body", "method", "supervised", "hyperparameters", "n_epochs")`` ->
    ``"method.supervised.hyperparameters.n_epochs"``; list indices become ``[i]``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


# Codes for pydantic's own error types. Our schemas raise PydanticCustomError with an
# ``invalid_*`` type: that type is the code and its message is already a full sentence.
_BUILTIN_CODES = {
    "missing": "missing_required_parameter",
    "extra_forbidden": "unknown_parameter",
    "json_invalid": "invalid_json",
}


def validation_error(errors: Sequence[Mapping[str, Any]]) -> JSONResponse:
    """Turn FastAPI/pydantic validation errors into one 400 naming the first bad field."""
    first = errors[0] if errors else {"loc": (), "msg": "Invalid request.", "type": "invalid"}
    param = param_path(tuple(first.get("loc", ())))
    kind = str(first.get("type", ""))
    message = str(first.get("msg", "Invalid request."))
    custom = kind.startswith("invalid_")
    if kind == "json_invalid":
        param = None
        message = "The request body is not valid JSON."
    elif param is None:
        message = "The request body must be a JSON object sent with Content-Type: application/json."
    elif kind == "missing":
        message = f"Missing required parameter: '{param}'."
    elif kind == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
    elif not custom:
        message = f"Invalid value for '{param}': {message}"
    if len(errors) > 1:
        more = len(errors) - 1
        message += f" ({more} more problem{'s' if more > 1 else ''} in the request)"
    code = kind if custom else _BUILTIN_CODES.get(kind, "invalid_value")
    return error_response(400, message, param=param, code=code)


_HTTP_CODES = {404: "unknown_url", 405: "method_not_allowed", 413: "request_too_large"}


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_error(exc.errors())

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code)
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            methods = allowed_methods(request)
            if methods:
                headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
                headers["allow"] = ", ".join(methods)
        return error_response(exc.status_code, message, code=code, headers=headers)

    async def on_data_error(request: Request, exc: Exception) -> JSONResponse:
        # A value the database cannot store or compare (e.g. a NUL byte for PostgreSQL) that
        # slipped past the schemas: still the client's input, so a 400, not a 500.
        log.warning(
            "database rejected a request value on %s %s: %s", request.method, request.url.path, exc
        )
        return error_response(
            400, "A value in the request cannot be processed.", code="invalid_value"
        )

    async def on_database_down(request: Request, exc: Exception) -> JSONResponse:
        first_line = (str(exc).splitlines() or [""])[0]
        log.warning(
            "database unreachable on %s %s: %s", request.method, request.url.path, first_line
        )
        return ServiceUnavailable(
            "The service's database is unreachable; retry after a few seconds."
        ).response()

    async def on_statement_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StatementError)
        if isinstance(exc.orig, UnstorableText):  # core.jsontext refused it: nothing stored
            return error_response(400, f"{exc.orig}.", code="invalid_unicode")
        if isinstance(exc, DataError):
            return await on_data_error(request, exc)
        return await on_unexpected(request, exc)

    async def on_unstorable(_: Request, exc: Exception) -> JSONResponse:
        return error_response(400, f"{exc}.", code="invalid_unicode")

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            "The server had an error while processing your request.",
            type="server_error",
            code="internal_error",
        )

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(DataError, on_data_error)
    for error in DATABASE_DOWN:
        app.add_exception_handler(error, on_database_down)
    app.add_exception_handler(StatementError, on_statement_error)
    app.add_exception_handler(UnstorableText, on_unstorable)
    app.add_exception_handler(Exception, on_unexpected)


ERROR_DESCRIPTIONS = {
    400: "Invalid request (the `param` field names the culprit).",
    401: "Missing or invalid API key.",
    403: "The key is not an admin key.",
    404: "No such object for this key's tenant.",
    409: "The object's state does not allow this (sent with `x-should-retry: false`).",
    413: "The request body or upload is larger than the configured limit.",
    429: "A rate limit or quota was reached; `Retry-After` says when to retry.",
    503: "The database is unreachable.",
}


def responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting the error envelope for these statuses (the
    statuses every operation of a kind can answer are added by ``api.openapi_doc``)."""
    return {
        code: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS.get(code, "Error.")}
        for code in status_codes
    }


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first
    matching route's, e.g. ``POST`` on ``/v1/files`` that also has ``GET``): each method is
    tried against the router, through its public ``matches``."""
    from starlette.routing import Match

    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed
