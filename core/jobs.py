"""Job lifecycle: states and the conditional updates that move a job between them.

Every transition is one conditional UPDATE, so the API and any number of workers can race
without locks: whoever's WHERE clause still matches wins, the others see ``False``/``None``.
A worker owns a running job only while ``status == 'running'`` and ``attempt`` is its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.models import Job, JobEvent, now


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"  # extension: OpenAI has pause/resume but no such status value
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
CANCELLABLE = frozenset(
    {JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED}
)


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    worker_id: str


def _changed(result: Any) -> bool:
    """Whether a conditional UPDATE matched exactly one row (it lost no race)."""
    return int(result.rowcount) == 1


def add_event(
    session: Session,
    job: Job,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    event = JobEvent(
        job_id=job.id, tenant_id=job.tenant_id, level=level, type=type, message=message, data=data
    )
    session.add(event)
    return event


def claim(session: Session, job_id: str, worker_id: str) -> Claim | None:
    """queued -> running for this worker. ``None``: a duplicate delivery or a cancelled job."""
    ts = now()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            attempt=Job.attempt + 1,
            worker_id=worker_id,
            heartbeat_at=ts,
            started_at=func.coalesce(Job.started_at, ts),
        )
        .execution_options(synchronize_session=False)
    )
    if not _changed(result):
        return None
    attempt = session.execute(select(Job.attempt).where(Job.id == job_id)).scalar_one()
    return Claim(job_id=job_id, attempt=attempt, worker_id=worker_id)


def _owned(claim: Claim) -> tuple[Any, ...]:
    return (
        Job.id == claim.job_id,
        Job.status == JobStatus.RUNNING,
        Job.attempt == claim.attempt,
        Job.worker_id == claim.worker_id,
    )


def heartbeat(session: Session, claim: Claim, **values: Any) -> bool:
    """Refresh the heartbeat (and progress fields). ``False``: the job is no longer ours to run
    (cancelled, paused, or re-queued by the sweeper), so the worker must stop."""
    result = session.execute(
        update(Job)
        .where(*_owned(claim))
        .values(heartbeat_at=now(), **values)
        .execution_options(synchronize_session=False)
    )
    return _changed(result)


def finish(session: Session, claim: Claim, **values: Any) -> bool:
    """running -> succeeded, only if the job is still ours."""
    result = session.execute(
        update(Job)
        .where(*_owned(claim))
        .values(status=JobStatus.SUCCEEDED, finished_at=now(), **values)
        .execution_options(synchronize_session=False)
    )
    return _changed(result)


def fail(
    session: Session, claim: Claim, *, code: str, message: str, param: str | None = None
) -> bool:
    """running -> failed (a deterministic error: never retried)."""
    result = session.execute(
        update(Job)
        .where(*_owned(claim))
        .values(
            status=JobStatus.FAILED,
            finished_at=now(),
            error_code=code,
            error_message=message,
            error_param=param,
        )
        .execution_options(synchronize_session=False)
    )
    return _changed(result)


def release(session: Session, claim: Claim) -> bool:
    """running -> queued after a transient error, so the same job can be picked up again."""
    result = session.execute(
        update(Job)
        .where(*_owned(claim))
        .values(status=JobStatus.QUEUED, worker_id=None, enqueued_at=now())
        .execution_options(synchronize_session=False)
    )
    return _changed(result)


def wait(session: Session, claim: Claim) -> bool:
    """running -> queued because the job cannot start yet (its pre-aligned model is pending).
    Waiting is not an attempt, so the claim's attempt is given back; the job is re-sent when
    what it waits for is ready (or by the sweeper)."""
    result = session.execute(
        update(Job)
        .where(*_owned(claim))
        .values(
            status=JobStatus.QUEUED,
            worker_id=None,
            enqueued_at=now(),
            attempt=Job.attempt - 1,
            heartbeat_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    return _changed(result)


def _transition(session: Session, job: Job, allowed: frozenset[str], **values: Any) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status.in_(allowed))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.refresh(job)
    return _changed(result)


def cancel(session: Session, job: Job) -> bool:
    """Any non-terminal state -> cancelled. A running worker notices at its next heartbeat."""
    return _transition(session, job, CANCELLABLE, status=JobStatus.CANCELLED, finished_at=now())


def pause(session: Session, job: Job) -> bool:
    """running -> paused. The worker checkpoints and stops at its next heartbeat."""
    return _transition(session, job, frozenset({JobStatus.RUNNING}), status=JobStatus.PAUSED)


def resume(session: Session, job: Job) -> bool:
    """paused -> queued; the caller re-sends the task, which resumes from the last checkpoint."""
    return _transition(
        session,
        job,
        frozenset({JobStatus.PAUSED}),
        status=JobStatus.QUEUED,
        worker_id=None,
        enqueued_at=now(),
    )


def stale_running(session: Session, *, older_than: int) -> list[Job]:
    return list(
        session.scalars(
            select(Job).where(Job.status == JobStatus.RUNNING, Job.heartbeat_at < older_than)
        )
    )


def lost_queued(session: Session, *, older_than: int) -> list[Job]:
    return list(
        session.scalars(
            select(Job).where(Job.status == JobStatus.QUEUED, Job.enqueued_at < older_than)
        )
    )


def requeue_stale(session: Session, job: Job, *, max_attempts: int) -> bool:
    """A running job whose worker went silent: back to queued (it resumes from its last
    checkpoint), or failed once it has used ``max_attempts``. Returns True when re-queued."""
    heartbeat_at = job.heartbeat_at
    if job.attempt >= max_attempts:
        _transition(
            session,
            job,
            frozenset({JobStatus.RUNNING}),
            status=JobStatus.FAILED,
            finished_at=now(),
            error_code="worker_lost",
            error_message=f"The worker stopped responding {job.attempt} times; giving up.",
        )
        return False
    result = session.execute(
        update(Job)
        .where(
            Job.id == job.id,
            Job.status == JobStatus.RUNNING,
            Job.heartbeat_at == heartbeat_at,
        )
        .values(status=JobStatus.QUEUED, worker_id=None, enqueued_at=now())
        .execution_options(synchronize_session=False)
    )
    return _changed(result)


def touch_enqueued(session: Session, job_id: str) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(enqueued_at=now())
        .execution_options(synchronize_session=False)
    )
