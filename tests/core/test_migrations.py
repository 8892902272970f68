"""Migrations upgrade and downgrade cleanly on both databases, and match the ORM metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from core import migrate
from core.models import Base


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return str(request.getfixturevalue("pg_database"))


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_db: str) -> None:
    from core.db import engine_for

    engine_for.cache_clear()
    migrate.downgrade(empty_db, "base")  # start from nothing, whatever earlier tests left
    assert _tables(empty_db) == set()
    migrate.upgrade(empty_db)
    assert _tables(empty_db) == set(Base.metadata.tables)
    migrate.downgrade(empty_db, "base")
    assert _tables(empty_db) == set()
    migrate.upgrade(empty_db)
    engine = create_engine(empty_db)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        version = conn.execute(text("select version_num from alembic_version")).scalar_one()
    engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"
    assert version
