"""Expired files' bytes are deleted by the sweeper; the row (metadata) stays, marked deleted."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from core.accounts import get_or_create_tenant
from core.config import Settings
from core.models import File, Job, now
from core.storage import ArtifactStore, file_key
from worker import sweeper


def _file(factory: sessionmaker[Session], store: ArtifactStore, *, expires_at: int | None) -> str:
    with factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        row = File(
            tenant_id=tenant.id, filename="t.jsonl", purpose="fine-tune", bytes=5, sha256="0" * 64,
            storage_key="", status="processed", expires_at=expires_at,
        )  # fmt: skip
        session.add(row)
        session.flush()
        row.storage_key = file_key(row.id)
        store.write_stream(row.storage_key, [b"hello"])
        return row.id


def test_sweeper_deletes_expired_bytes_and_keeps_the_row(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    store = ArtifactStore(settings.resolved_artifacts_dir)
    expired = _file(session_factory, store, expires_at=now() - 5)
    live = _file(session_factory, store, expires_at=now() + 3600)
    forever = _file(session_factory, store, expires_at=None)
    in_use = _file(session_factory, store, expires_at=now() - 5)
    with session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        session.add(Job(tenant_id=tenant.id, model="m", training_file=in_use, status="queued",
                        seed=1, enqueued_at=now()))  # fmt: skip

    sweeper.sweep(settings=settings, send=lambda _id: None)

    assert not store.exists(file_key(expired))
    for kept in (live, forever, in_use):
        assert store.exists(file_key(kept))
    with session_factory.begin() as session:
        row = _row(session, expired)
        assert row.deleted_at is not None and row.bytes == 5 and row.filename == "t.jsonl"
        assert _row(session, in_use).deleted_at is None
    sweeper.sweep(settings=settings, send=lambda _id: None)  # idempotent


def _row(session: Session, file_id: str) -> File:
    return session.query(File).filter_by(id=file_id).one()
