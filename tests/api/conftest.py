"""API fixtures: an app on the ``settings`` backend (SQLite and PostgreSQL), tenants with keys,
a base model, an uploaded training file and a queued job."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.main import create_app
from core.accounts import create_key
from core.config import Settings
from core.db import session_factory as make_session_factory
from core.db import session_scope
from core.models import Model
from tests.api.helpers import BASE_MODEL, Keys, chat_jsonl, create_job, upload


@pytest.fixture
def keys(settings: Settings) -> Keys:
    secret = settings.resolved_key_secret()
    with session_scope(make_session_factory(settings.resolved_database_url)) as session:
        a = create_key(session, tenant_name="alpha", admin=False, secret=secret)
        b = create_key(session, tenant_name="beta", admin=False, secret=secret)
        admin = create_key(session, tenant_name="provider", admin=True, secret=secret)
        session.add_all(
            [
                Model(id=BASE_MODEL, source="builtin", status="ready"),
                Model(id="pending-model", source="local", status="pending"),
                Model(id="broken-model", source="local", status="error"),
            ]
        )
    return Keys(a=a, b=b, admin=admin)


@pytest.fixture
def app(settings: Settings, keys: Keys) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def training_file(client: TestClient, keys: Keys) -> str:
    response = upload(client, keys.a, chat_jsonl(12))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "processed"
    return str(response.json()["id"])


@pytest.fixture
def job_id(client: TestClient, keys: Keys, training_file: str) -> str:
    response = create_job(client, keys.a, training_file)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])
