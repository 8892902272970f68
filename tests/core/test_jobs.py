"""The job state machine: each transition is one conditional UPDATE that loses races cleanly."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from core import jobs
from core.accounts import get_or_create_tenant
from core.models import File, Job, JobEvent, now


def _job(factory: sessionmaker[Session], status: str = "queued") -> str:
    with factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        f = File(
            tenant_id=tenant.id, filename="t.jsonl", purpose="fine-tune", bytes=1, sha256="0" * 64,
            storage_key="files/x.jsonl", status="processed",
        )  # fmt: skip
        session.add(f)
        session.flush()
        job = Job(
            tenant_id=tenant.id, model="tiny-gpt2", training_file=f.id, status=status, seed=1,
            enqueued_at=now(),
        )  # fmt: skip
        session.add(job)
        session.flush()
        return job.id


def test_claim_is_exclusive(session_factory: sessionmaker[Session]) -> None:
    job_id = _job(session_factory)
    with session_factory.begin() as s:
        first = jobs.claim(s, job_id, "w1")
    with session_factory.begin() as s:
        second = jobs.claim(s, job_id, "w2")
    assert first is not None and first.attempt == 1
    assert second is None  # a duplicate delivery does nothing


def test_cancelled_job_cannot_be_claimed(session_factory: sessionmaker[Session]) -> None:
    job_id = _job(session_factory)
    with session_factory.begin() as s:
        assert jobs.cancel(s, s.query(Job).filter_by(id=job_id).one())
    with session_factory.begin() as s:
        assert jobs.claim(s, job_id, "w1") is None


def test_cancel_makes_heartbeat_and_finish_fail(session_factory: sessionmaker[Session]) -> None:
    job_id = _job(session_factory)
    with session_factory.begin() as s:
        claim = jobs.claim(s, job_id, "w1")
    assert claim is not None
    with session_factory.begin() as s:
        assert jobs.heartbeat(s, claim, step=3)
        assert jobs.cancel(s, s.query(Job).filter_by(id=job_id).one())
    with session_factory.begin() as s:
        assert not jobs.heartbeat(s, claim)
        assert not jobs.finish(s, claim, fine_tuned_model="x")
        job = s.query(Job).filter_by(id=job_id).one()
    assert job.status == "cancelled" and job.fine_tuned_model is None and job.step == 3


def test_cannot_cancel_finished_job(session_factory: sessionmaker[Session]) -> None:
    job_id = _job(session_factory, status="succeeded")
    with session_factory.begin() as s:
        assert not jobs.cancel(s, s.query(Job).filter_by(id=job_id).one())


def test_pause_then_resume_requeues(session_factory: sessionmaker[Session]) -> None:
    job_id = _job(session_factory)
    with session_factory.begin() as s:
        claim = jobs.claim(s, job_id, "w1")
    assert claim is not None
    with session_factory.begin() as s:
        job = s.query(Job).filter_by(id=job_id).one()
        assert jobs.pause(s, job)
        assert not jobs.pause(s, job)  # already paused
    with session_factory.begin() as s:
        assert not jobs.heartbeat(s, claim)  # the worker learns it must stop
        assert jobs.resume(s, s.query(Job).filter_by(id=job_id).one())
    with session_factory.begin() as s:
        again = jobs.claim(s, job_id, "w2")
    assert again is not None and again.attempt == 2


def test_stale_job_is_requeued_then_failed(session_factory: sessionmaker[Session]) -> None:
    job_id = _job(session_factory)
    for attempt in (1, 2):
        with session_factory.begin() as s:
            claim = jobs.claim(s, job_id, f"w{attempt}")
            assert claim is not None and claim.attempt == attempt
            s.query(Job).filter_by(id=job_id).update({"heartbeat_at": now() - 1000})
        with session_factory.begin() as s:
            stale = jobs.stale_running(s, older_than=now() - 100)
            assert [j.id for j in stale] == [job_id]
            requeued = jobs.requeue_stale(s, stale[0], max_attempts=2)
        assert requeued is (attempt == 1)
    with session_factory.begin() as s:
        job = s.query(Job).filter_by(id=job_id).one()
        assert job.status == "failed" and job.error_code == "worker_lost"


def test_events_are_recorded(session_factory: sessionmaker[Session]) -> None:
    job_id = _job(session_factory)
    with session_factory.begin() as s:
        job = s.query(Job).filter_by(id=job_id).one()
        jobs.add_event(s, job, "hello", type="metrics", data={"step": 1})
    with session_factory.begin() as s:
        (event,) = s.query(JobEvent).filter_by(job_id=job_id).all()
        assert event.tenant_id == job.tenant_id and event.data == {"step": 1}
