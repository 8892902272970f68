"""Dashboard fixtures: an app on a fresh SQLite home (the PostgreSQL layout is covered where a
query differs), seeded data, and a client signed in as the provider."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core import migrate
from core.config import Settings
from tests.dashboard.seed import Seed, seed

ORIGIN = "http://testserver"


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per test session, copied for each test (migrating costs ~1 s)."""
    path = tmp_path_factory.mktemp("template") / "ftaas.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def make_settings(home: Path, template: Path | None = None, **overrides: object) -> Settings:
    home.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{home / 'ftaas.db'}"
    if template is not None:
        shutil.copyfile(template, home / "ftaas.db")
    else:
        migrate.upgrade(url)
    return Settings(
        home=home,
        database_url=url,
        broker_url=f"sqla+sqlite:///{home / 'broker.db'}",
        key_secret="test-secret",
        _env_file=None,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
def dash_settings(tmp_path: Path, migrated_sqlite: Path) -> Settings:
    return make_settings(tmp_path / "home", migrated_sqlite)


@pytest.fixture
def seeded(dash_settings: Settings) -> Seed:
    return seed(dash_settings)


@pytest.fixture
def client(dash_settings: Settings, seeded: Seed) -> Iterator[TestClient]:
    with TestClient(create_app(dash_settings), follow_redirects=False) as c:
        yield c


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def sign_in(client: TestClient, key: str) -> str:
    """Signs in and returns the session's CSRF token."""
    response = client.post("/dashboard/login", data={"api_key": key}, headers={"Origin": ORIGIN})
    assert response.status_code == 303, response.text
    page = client.get("/dashboard/")
    assert page.status_code == 200
    return csrf_of(page.text)


@pytest.fixture
def admin(client: TestClient, seeded: Seed) -> str:
    return sign_in(client, seeded.admin_key)
