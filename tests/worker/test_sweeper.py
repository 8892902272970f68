"""The sweeper recovers lost work from the database alone."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from core import jobs
from core.accounts import get_or_create_tenant
from core.config import Settings
from core.models import File, Job, JobEvent, now
from worker import sweeper


def _job(factory: sessionmaker[Session], **values: object) -> str:
    with factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        job = Job(tenant_id=tenant.id, model="tiny-gpt2", training_file="file-x", seed=1, **values)
        session.add(job)
        session.flush()
        return job.id


def test_stale_running_job_is_requeued_and_resent(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    stale = _job(session_factory, status="queued", enqueued_at=now())
    with session_factory.begin() as s:
        assert jobs.claim(s, stale, "dead-worker") is not None
        s.query(Job).filter_by(id=stale).update({"heartbeat_at": now() - 10_000})
    alive = _job(session_factory, status="queued", enqueued_at=now())
    with session_factory.begin() as s:
        assert jobs.claim(s, alive, "live-worker") is not None

    sent: list[str] = []
    assert sweeper.sweep(settings=settings, send=lambda job_id, kind: sent.append(job_id)) == [
        stale
    ]
    assert sent == [stale]
    with session_factory.begin() as s:
        assert s.query(Job).filter_by(id=stale).one().status == "queued"
        assert s.query(Job).filter_by(id=alive).one().status == "running"
        assert any("re-queued" in e.message for e in s.query(JobEvent).filter_by(job_id=stale))


def test_lost_queued_message_is_resent_once_per_window(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    lost = _job(session_factory, status="queued", enqueued_at=now() - 10_000)
    fresh = _job(session_factory, status="queued", enqueued_at=now())
    sent: list[str] = []
    sweeper.sweep(settings=settings, send=lambda job_id, kind: sent.append(job_id))
    assert sent == [lost] and fresh not in sent
    sweeper.sweep(
        settings=settings, send=lambda job_id, kind: sent.append(job_id)
    )  # enqueued_at was refreshed
    assert sent == [lost]


def test_job_lost_too_often_fails(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    job_id = _job(session_factory, status="queued", enqueued_at=now())
    with session_factory.begin() as s:
        claim = jobs.claim(s, job_id, "w")
        assert claim is not None
        s.query(Job).filter_by(id=job_id).update({"heartbeat_at": now() - 10_000, "attempt": 3})
    assert sweeper.sweep(settings=settings, send=lambda _id, _kind: None) == []
    with session_factory.begin() as s:
        job = s.query(Job).filter_by(id=job_id).one()
    assert job.status == "failed" and job.error_code == "worker_lost"


def test_file_still_queued_for_screening_is_resent_once_per_window(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    def file(created_at: int, status: str | None) -> str:
        with session_factory.begin() as s:
            tenant = get_or_create_tenant(s, "acme")
            row = File(
                tenant_id=tenant.id, filename="f.jsonl", purpose="fine-tune", bytes=1,
                sha256="0" * 64, storage_key="k", status="processed", safety_status=status,
                created_at=created_at,
            )  # fmt: skip
            s.add(row)
            s.flush()
            return row.id

    lost = file(now() - 10_000, "queued")
    file(now(), "queued")  # just uploaded: its message is on its way
    file(now() - 10_000, "completed")
    sent: list[str] = []
    files: list[str] = []
    assert sweeper.sweep(
        settings=settings, send=lambda job_id, kind: sent.append(job_id), send_file=files.append
    ) == [lost]
    assert files == [lost] and sent == []
    sweeper.sweep(
        settings=settings, send=lambda job_id, kind: sent.append(job_id), send_file=files.append
    )
    assert files == [lost]  # stamped: not again within the window
