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


def test_upgrade_keeps_existing_rows(empty_db: str) -> None:
    """Rows written under 0001 survive 0002 and take its defaults (nothing accepted is lost)."""
    from core.db import engine_for

    engine_for.cache_clear()
    migrate.downgrade(empty_db, "base")
    migrate.upgrade(empty_db, "0001")
    engine = create_engine(empty_db)
    with engine.begin() as conn:
        conn.execute(text("insert into tenants (id, name, created_at) values ('org-1', 'acme', 1)"))
        conn.execute(
            text(
                "insert into models (id, source, status, owned_by, lineage, created_at) "
                "values ('tiny-gpt2', 'builtin', 'ready', 'system', '{}', 1)"
            )
        )
        conn.execute(
            text(
                "insert into jobs (id, tenant_id, model, training_file, status, hyperparameters, "
                "resolved_hyperparameters, method, defense, seed, step, attempt, created_at) values "
                "('ftjob-1', 'org-1', 'tiny-gpt2', 'file-1', 'succeeded', '{}', '{}', "
                "'supervised', 'sft', 1, 0, 1, 1)"
            )
        )
    migrate.upgrade(empty_db)
    with engine.connect() as conn:
        job = conn.execute(text("select kind, defense_params from jobs")).one()
        model = conn.execute(text("select kind, policy from models")).one()
        tenant_policy = conn.execute(text("select policy from tenants")).scalar_one()
    engine.dispose()
    assert job.kind == "fine_tune" and job.defense_params in ("{}", {})
    assert model.kind == "base" and model.policy in ("{}", {})
    assert tenant_policy in ("{}", {})
    migrate.downgrade(empty_db, "0001")
    migrate.upgrade(empty_db)
