"""Shared fixtures for the service tests: real PostgreSQL + Redis, and the embedded SQLite default.

``backend`` is parametrised over both layouts wherever a test asks for ``settings``:
- ``embedded``: SQLite database and kombu's SQLAlchemy transport on a SQLite file (``ftaas serve``);
- ``production``: PostgreSQL (a fresh database per test session) and Redis (a dedicated db index).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from core import migrate
from core.config import Settings
from core.db import engine_for

PG_ADMIN_URL = os.environ.get(
    "FTAAS_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("FTAAS_TEST_REDIS_URL", "redis://127.0.0.1:6379")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database index claimed for this test session (1-15), so that test sessions
    running side by side on one machine never consume or flush each other's messages."""
    import redis

    token = secrets.token_hex(8)
    for index in range(1, 16):
        url = f"{REDIS_BASE_URL}/{index}"
        client = redis.Redis.from_url(url)
        if client.set("ftaas-test-session", token, nx=True, ex=6 * 3600):
            try:
                yield url
            finally:
                if client.get("ftaas-test-session") == token.encode():
                    client.flushdb()
            return
    pytest.fail("no free Redis database index (1-15) for this test session")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A throw-away PostgreSQL database for this test session, dropped at the end."""
    name = f"ftaas_test_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _reset_tables(url: str) -> None:
    """Empty every table (faster than re-migrating for each test)."""
    from core.models import Base

    engine = engine_for(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture(scope="session")
def _migrated_pg(pg_database: str) -> str:
    migrate.upgrade(pg_database)
    return pg_database


@pytest.fixture(params=["embedded", "production"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings for one test, on the layout named by ``backend``; the schema is migrated."""
    home = tmp_path / "home"
    if backend == "embedded":
        url = f"sqlite:///{home / 'ftaas.db'}"
        home.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(url)
        broker = f"sqla+sqlite:///{home / 'broker.db'}"
    else:
        url = request.getfixturevalue("_migrated_pg")
        _reset_tables(url)
        broker = request.getfixturevalue("redis_url")
        import redis

        client = redis.Redis.from_url(broker)
        for key in client.scan_iter():
            if key != b"ftaas-test-session":
                client.delete(key)
    return Settings(
        home=home,
        database_url=url,
        broker_url=broker,
        key_secret="test-secret",
        heartbeat_interval_s=0.2,
        checkpoint_every=2,
        min_examples=10,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def session_factory(settings: Settings) -> sessionmaker[Session]:
    return sessionmaker(bind=engine_for(settings.resolved_database_url), expire_on_commit=False)
