"""The HTTP contract: one error envelope for every failure, no 500 for bad input, and an
OpenAPI document that matches what the routes do."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.api.helpers import Keys, auth

ENVELOPE_KEYS = {"message", "type", "param", "code"}


def assert_envelope(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == ENVELOPE_KEYS, body
    assert "Traceback" not in response.text
    return dict(body["error"])


def test_unknown_route_and_method(client: TestClient, keys: Keys) -> None:
    error = assert_envelope(client.get("/v1/nope", headers=auth(keys.a)), 404)
    assert error["code"] == "unknown_url" and error["message"] == "Invalid URL (GET /v1/nope)"
    response = client.put("/v1/files", headers=auth(keys.a))
    error = assert_envelope(response, 405)
    assert error["code"] == "method_not_allowed"
    assert response.headers["allow"]  # Starlette names the first matching route's methods


def test_bad_json_bodies_are_400(client: TestClient, keys: Keys) -> None:
    url = "/v1/fine_tuning/jobs"
    headers = {**auth(keys.a), "content-type": "application/json"}
    error = assert_envelope(client.post(url, headers=headers, content=b"{nope"), 400)
    assert error["code"] == "invalid_json" and error["param"] is None
    for content in (b"[1, 2]", b'"text"', b"null"):
        error = assert_envelope(client.post(url, headers=headers, content=content), 400)
        assert error["type"] == "invalid_request_error"
    error = assert_envelope(client.post(url, headers=auth(keys.a), content=b"model=x"), 400)
    assert "Content-Type: application/json" in error["message"]
    error = assert_envelope(client.post(url, headers=auth(keys.a)), 400)


def test_json_body_size_is_capped(client: TestClient, keys: Keys) -> None:
    big = {"model": "x", "training_file": "f", "metadata": {"k": "v" * 2_000_000}}
    error = assert_envelope(
        client.post("/v1/fine_tuning/jobs", headers=auth(keys.a), json=big), 413
    )
    assert error["code"] == "request_too_large"

    def chunks() -> Any:
        yield b'{"model": "x", "suffix": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    response = client.post(
        "/v1/fine_tuning/jobs",
        headers={**auth(keys.a), "content-type": "application/json"},
        content=chunks(),
    )
    assert_envelope(response, 413)


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", "/v1/files", {"limit": "abc"}),
        ("GET", "/v1/files", {"limit": "0"}),
        ("GET", "/v1/files", {"limit": "10001"}),
        ("GET", "/v1/files", {"order": "sideways"}),
        ("GET", "/v1/fine_tuning/jobs", {"limit": "-1"}),
        ("GET", "/v1/fine_tuning/jobs", {"after": "ftjob-missing"}),
        ("GET", "/v1/fine_tuning/jobs", {"metadata[" + "k" * 70 + "]": "v"}),
    ],
)
def test_bad_query_parameters_are_400_naming_the_param(
    client: TestClient, keys: Keys, method: str, path: str, params: dict[str, str]
) -> None:
    error = assert_envelope(client.request(method, path, params=params, headers=auth(keys.a)), 400)
    assert error["param"] is not None
    assert error["param"] in {"limit", "order", "after"} or error["param"].startswith("metadata")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/files/%00",
        "/v1/files/" + "x" * 500,
        "/v1/fine_tuning/jobs/'; DROP TABLE jobs; --",
        "/v1/fine_tuning/jobs/\u00e9\u00e9/events",
        "/v1/models/../../etc/passwd",
    ],
)
def test_odd_ids_never_500(client: TestClient, keys: Keys, path: str) -> None:
    response = client.get(path, headers=auth(keys.a))
    assert response.status_code in (400, 404)
    assert_envelope(response, response.status_code)


def test_openapi_document(app: FastAPI, client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert "ErrorResponse" in schema["components"]["schemas"]
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            assert op.get("summary"), where
            assert op.get("tags"), where
            assert "422" not in op["responses"], where
            ok = op["responses"].get("200") or op["responses"].get("201")
            assert ok and ok.get("content"), where
            if path != "/healthz":
                assert "401" in op["responses"], where
                assert op.get("security"), where
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorResponse"), where
    upload = schema["paths"]["/v1/files"]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file", "purpose"]
    assert "413" in upload["responses"]
    create = schema["paths"]["/v1/fine_tuning/jobs"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "JobCreate"
    )
    listing = schema["paths"]["/v1/fine_tuning/jobs"]["get"]
    assert any(
        p["name"] == "metadata" and p.get("style") == "deepObject" for p in listing["parameters"]
    )
    for conflict in ("cancel", "pause", "resume"):
        assert (
            "409"
            in schema["paths"][f"/v1/fine_tuning/jobs/{{fine_tuning_job_id}}/{conflict}"]["post"][
                "responses"
            ]
        )
    adapter = schema["paths"][
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints/{checkpoint_id}/adapter"
    ]["get"]
    assert "application/x-tar" in adapter["responses"]["200"]["content"]
    assert {"403", "404", "409"} <= set(adapter["responses"])
    for path, model in (
        ("/admin/models/{model_id}", "ModelPolicyUpdate"),
        ("/admin/tenants/{tenant_name}", "TenantPolicyUpdate"),
    ):
        body = schema["paths"][path]["patch"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["$ref"].endswith(model)
    job = schema["components"]["schemas"]["JobRead"]["properties"]
    assert {"kind", "defense", "defense_params", "served_model", "safety"} <= set(job)
    assert "flagged_lines" not in job
    checkpoint = schema["components"]["schemas"]["CheckpointRead"]["properties"]
    assert {"safety", "deployable"} <= set(checkpoint)
    assert client.get("/docs").status_code == 200
