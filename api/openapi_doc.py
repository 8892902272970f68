"""The OpenAPI document, with every error a route can answer documented in one place.

Routes document their own specific errors (``api.errors.responses``: 404 on a missing object, 409
on a state conflict, …). The statuses that follow from what an operation *is* are added here,
so that no route can forget one (schemathesis checks every status against the document):

* any operation with parameters or a body: 400 (bad input, ``api.json_guard`` included);
* any operation with a body: 413 (``api.limits``);
* any operation that needs a key: 401, 429 (rate limits and quotas, with ``Retry-After``) and
  503 (the database is unreachable); under ``/admin``: 403 (not an admin key);
* any operation with a path parameter: 404.

FastAPI's 422 entries are dropped: this API answers bad input with a 400 envelope instead.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.errors import ERROR_DESCRIPTIONS

_ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def _error(status: int) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": _ERROR_SCHEMA}},
    }
    if status == 429:
        entry["headers"] = _RETRY_AFTER
    return entry


def implied_statuses(path: str, operation: dict[str, Any]) -> list[int]:
    params = operation.get("parameters", [])
    statuses: list[int] = []
    if params or "requestBody" in operation:
        statuses.append(400)
    if "requestBody" in operation:
        statuses.append(413)
    if operation.get("security"):
        statuses += [401, 429, 503]
        if path.startswith("/admin"):
            statuses.append(403)
    if any(p.get("in") == "path" for p in params):
        statuses.append(404)
    return statuses


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in implied_statuses(path, operation):
                responses.setdefault(str(status), _error(status))
            if "429" in responses:
                responses["429"].setdefault("headers", _RETRY_AFTER)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    if "ErrorResponse" not in components:
        from api.errors import ErrorBody, ErrorResponse

        components["ErrorBody"] = ErrorBody.model_json_schema()
        components["ErrorResponse"] = ErrorResponse.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        components["ErrorResponse"].pop("$defs", None)
    return schema
