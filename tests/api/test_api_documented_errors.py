"""The OpenAPI document names every error an operation can answer, and a 405 lists every method
of its path in ``Allow`` (schemathesis found both wrong; test_conformance.py runs it)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import Keys, auth


@pytest.mark.parametrize("backend", ["embedded"])
def test_every_operation_documents_its_implied_errors(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation["responses"]
            where = f"{method.upper()} {path}"
            assert "422" not in responses, where
            if operation.get("parameters") or "requestBody" in operation:
                assert "400" in responses, where
            if "requestBody" in operation:
                assert "413" in responses, where
            if path.startswith(("/v1", "/admin")):
                assert {"401", "429", "503"} <= set(responses), where
                assert "Retry-After" in responses["429"]["headers"], where
            if path.startswith("/admin"):
                assert "403" in responses, where


@pytest.mark.parametrize("backend", ["embedded"])
@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/v1/files", "GET, POST"),
        ("/v1/files/file-x", "GET, DELETE"),
        ("/v1/fine_tuning/jobs", "GET, POST"),
        ("/admin/models", "GET, POST"),
        ("/v1/fine_tuning/jobs/ftjob-x/cancel", "POST"),
    ],
)
def test_405_allows_every_method_of_the_path(
    client: TestClient, keys: Keys, path: str, allow: str
) -> None:
    response = client.request("OPTIONS", path, headers=auth(keys.a))
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["error"]["code"] == "method_not_allowed"
