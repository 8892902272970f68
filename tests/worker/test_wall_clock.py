"""The wall-clock limit: running time is summed over attempts at each stop check, and past the
job's limit the run stops (at a checkpoint, in fit) and the job fails with wall_clock_limit."""

from __future__ import annotations

import time

from sqlalchemy.orm import Session, sessionmaker

from core import jobs
from core.accounts import get_or_create_tenant
from core.models import File, Job, JobEvent, now
from defense.callbacks import TrainingStopped
from worker.reporting import JobReporter


def _running_job(factory: sessionmaker[Session], *, running_s: float, limit: int | None) -> jobs.Claim:  # fmt: skip
    with factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        f = File(
            tenant_id=tenant.id, filename="t.jsonl", purpose="fine-tune", bytes=1, sha256="0" * 64,
            storage_key="files/x.jsonl", status="processed",
        )  # fmt: skip
        session.add(f)
        session.flush()
        job = Job(tenant_id=tenant.id, model="m", training_file=f.id, status="queued", seed=1,
                  enqueued_at=now(), running_s=running_s, wall_clock_limit_s=limit)  # fmt: skip
        session.add(job)
        session.flush()
        claim = jobs.claim(session, job.id, "w")
        assert claim is not None
        return claim


def _job(factory: sessionmaker[Session], job_id: str) -> Job:
    with factory.begin() as session:
        return session.query(Job).filter_by(id=job_id).one()


def test_job_over_its_limit_stops_and_fails_with_wall_clock_limit(
    session_factory: sessionmaker[Session],
) -> None:
    # An earlier attempt already ran 0.9 s of the 1 s limit.
    claim = _running_job(session_factory, running_s=0.9, limit=1)
    reporter = JobReporter(session_factory, claim, interval_s=0.0)
    time.sleep(0.15)
    assert reporter.should_stop() is True
    reporter.record_stop(TrainingStopped(step=4))
    job = _job(session_factory, claim.job_id)
    assert job.status == "failed" and job.error_code == "wall_clock_limit"
    assert "wall-clock limit of 1 s" in (job.error_message or "") and "step 4" in (job.error_message or "")  # fmt: skip
    assert job.running_s >= 1.0
    with session_factory.begin() as session:
        assert session.query(JobEvent).filter_by(job_id=claim.job_id, level="error").count() == 1


def test_job_under_its_limit_or_unlimited_keeps_running_and_accumulates(
    session_factory: sessionmaker[Session],
) -> None:
    for limit in (3600, None):
        claim = _running_job(session_factory, running_s=10.0, limit=limit)
        reporter = JobReporter(session_factory, claim, interval_s=0.0)
        time.sleep(0.05)
        assert reporter.should_stop() is False
        job = _job(session_factory, claim.job_id)
        assert job.status == "running" and 10.04 < job.running_s < 20
