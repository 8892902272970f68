"""Bounded inputs at the API: text that is not valid Unicode and deep nesting get a 400 naming the
field (or line), on both backends, and nothing stored can make a later response fail."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, sessionmaker

from core.jsontext import UnstorableText
from core.models import Job
from tests.api.helpers import BASE_MODEL, Keys, auth, chat_line, create_job, upload

JOBS = "/v1/fine_tuning/jobs"


def job_body(training_file: str, fragment: str) -> str:
    """A create body as raw text, so that escapes reach the server exactly as written."""
    return f'{{"model": "{BASE_MODEL}", "training_file": "{training_file}", {fragment}}}'


def post_raw(client: TestClient, key: str, path: str, body: str) -> object:
    return client.post(
        path,
        headers={**auth(key), "content-type": "application/json"},
        content=body.encode(),
    )


def test_lone_surrogate_in_metadata_is_refused_and_the_tenant_stays_readable(
    client: TestClient, keys: Keys, training_file: str, job_id: str
) -> None:
    """The issue's input: metadata {"a": "\\ud800"} was stored, the create answered 500, and so
    did the tenant's get, list and cancel and the provider's GET /admin/jobs from then on."""
    body = job_body(training_file, '"metadata": {"a": "\\ud800"}')
    response = post_raw(client, keys.a, JOBS, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_unicode"
    assert error["param"] == "metadata.a"
    assert error["type"] == "invalid_request_error"
    assert "not valid Unicode" in error["message"]
    # Everything still answers.
    assert client.get(JOBS, headers=auth(keys.a)).status_code == 200
    assert len(client.get(JOBS, headers=auth(keys.a)).json()["data"]) == 1
    assert client.get(f"{JOBS}/{job_id}", headers=auth(keys.a)).status_code == 200
    assert client.get("/admin/jobs", headers=auth(keys.admin)).status_code == 200
    assert client.post(f"{JOBS}/{job_id}/cancel", headers=auth(keys.a)).status_code == 200


@pytest.mark.parametrize("backend", ["embedded"])  # input checks, before any storage
@pytest.mark.parametrize(
    ("fragment", "param"),
    [
        ('"suffix": "ok\\udfff"', "suffix"),
        ('"metadata": {"\\udc80": "v"}', "metadata.\\udc80"),
        ('"integrations": [{"type": "x", "n": ["\\ud83d"]}]', "integrations[0].n[0]"),
    ],
)
def test_lone_surrogate_anywhere_names_the_field(
    client: TestClient, keys: Keys, training_file: str, fragment: str, param: str
) -> None:
    body = job_body(training_file, fragment)
    response = post_raw(client, keys.a, JOBS, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_unicode"
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("backend", ["embedded"])  # input checks, before any storage
def test_a_paired_surrogate_escape_is_fine(
    client: TestClient, keys: Keys, training_file: str
) -> None:
    body = job_body(training_file, '"metadata": {"emoji": "\\ud83d\\ude00"}')
    response = post_raw(client, keys.a, JOBS, body)
    assert response.status_code == 200, response.text
    assert response.json()["metadata"] == {"emoji": "\U0001f600"}


@pytest.mark.parametrize("backend", ["embedded"])  # input checks, before any storage
@pytest.mark.parametrize("depth", [65, 450, 200_000])
def test_deep_nesting_is_refused(client: TestClient, keys: Keys, depth: int) -> None:
    body = '{"model": "m", "training_file": "f", "metadata": ' + "[" * depth + "]" * depth + "}"
    response = post_raw(client, keys.a, JOBS, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "json_too_deep"
    assert "64 levels" in response.json()["error"]["message"]
    # The admin routes are guarded too.
    response = client.patch(
        "/admin/tenants/alpha",
        headers={**auth(keys.admin), "content-type": "application/json"},
        content=('{"policy": ' + '{"a": ' * 70 + "1" + "}" * 71).encode(),
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "json_too_deep"


def test_deep_upload_line_with_a_surrogate_names_the_line(client: TestClient, keys: Keys) -> None:
    """The issue's upload: a line nested 450+ levels deep around "\\ud800" answered 500. The
    file is stored with status error naming the line, and a job on it is refused with 400."""
    deep = '{"messages": [{"role": "user", "content": "q", "x": ' + "[" * 460
    deep += '"\\ud800"' + "]" * 460 + '}, {"role": "assistant", "content": "a"}]}'
    content = ("\n".join([chat_line(i) for i in range(10)] + [deep]) + "\n").encode()
    response = upload(client, keys.a, content)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "error"
    assert [(e["line"], e["code"]) for e in body["errors"]] == [(11, "json_too_deep")]
    assert body["errors"][0]["field"].startswith("messages[0].x[0]")
    refused = create_job(client, keys.a, body["id"])
    assert refused.status_code == 400
    assert "line 11" in refused.json()["error"]["message"]
    assert client.get(f"/v1/files/{body['id']}", headers=auth(keys.a)).status_code == 200
    assert client.get("/v1/files", headers=auth(keys.a)).status_code == 200


def test_the_database_refuses_unreadable_json(
    keys: Keys, session_factory: sessionmaker[Session], job_id: str
) -> None:
    """Whatever slips past the API, a JSON column is never written with a lone surrogate."""
    with session_factory() as session:
        job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
        job.metadata_ = {"a": "\ud800"}
        with pytest.raises((StatementError, UnstorableText)) as raised:
            session.commit()
        error = raised.value
        # SQLite's driver serializes in SQLAlchemy (wrapped), psycopg in its own adapter (not).
        assert isinstance(getattr(error, "orig", error), UnstorableText)
        session.rollback()
    with session_factory() as session:
        stored = session.execute(select(Job.metadata_).where(Job.id == job_id)).scalar_one()
        assert json.dumps(stored, ensure_ascii=False).encode()  # still readable
