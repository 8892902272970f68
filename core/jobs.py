"""Job lifecycle: states and the conditional updates that move a job between them.

Every transition is one conditional UPDATE, so the API and any number of workers can race
without locks: whoever's WHERE clause still matches wins, the others see ``False``/``None``.
A worker owns a running job only while ``status == 'running'`` and ``attempt`` is its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import func, or_, select, update
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
        .where(
            Job.id == job_id,
            Job.status == JobStatus.QUEUED,
            # A job deferred after an environment error waits until its retry time.
            or_(Job.retry_at.is_(None), Job.retry_at <= ts),
        )
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


# --- recovery without using up an attempt (worker/preemption.py, worker/errors.py) ----------------


class Ownership(StrEnum):
    """Why a heartbeat did or did not match: the job is ours, paused or cancelled by a person
    (still our attempt: we may checkpoint before stopping), or lost to another attempt."""

    OWNED = "owned"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    LOST = "lost"


def ownership(session: Session, claim: Claim) -> Ownership:
    row = session.execute(
        select(Job.status, Job.attempt, Job.worker_id).where(Job.id == claim.job_id)
    ).one_or_none()
    if row is None or row.attempt != claim.attempt or row.worker_id != claim.worker_id:
        return Ownership.LOST
    if row.status == JobStatus.RUNNING:
        return Ownership.OWNED
    if row.status == JobStatus.PAUSED:
        return Ownership.PAUSED
    if row.status == JobStatus.CANCELLED:
        return Ownership.CANCELLED
    return Ownership.LOST


def give_back(session: Session, claim: Claim) -> bool:
    """running -> queued because this worker is stopping (preempted, or its database went away
    for a moment): the claim's attempt is given back, so being stopped never counts as a
    failure. The job resumes from its last complete checkpoint on the next claim."""
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


def defer(session: Session, claim: Claim, *, retry_at: int) -> bool:
    """running -> queued after an environment error (disk full, I/O): not an attempt; the job is
    not claimable before ``retry_at`` and counts one more ``env_retries``."""
    result = session.execute(
        update(Job)
        .where(*_owned(claim))
        .values(
            status=JobStatus.QUEUED,
            worker_id=None,
            enqueued_at=now(),
            attempt=Job.attempt - 1,
            heartbeat_at=None,
            retry_at=retry_at,
            env_retries=Job.env_retries + 1,
            sent_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    return _changed(result)


def mark_sent(session: Session, job_id: str) -> None:
    """Record that a task message for this job was just sent (the sweeper's grace starts)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(sent_at=now(), sends=Job.sends + 1)
        .execution_options(synchronize_session=False)
    )


def record_run_config(session: Session, job_id: str, config: dict[str, Any]) -> dict[str, Any]:
    """The run config the job started with: recorded at its first start, returned unchanged by
    every later call, so a resume trains with the values it started with."""
    job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
    if not job.run_config:
        job.run_config = config
        session.flush()
    return dict(job.run_config)


def resend_due(session: Session, *, at: int, grace_s: float, max_backoff_s: float) -> list[Job]:
    """Queued jobs whose task message may be lost: the last send (or the enqueue) is older than
    ``grace_s * 2**(sends - 1)`` (capped at ``max_backoff_s``), and any retry time has passed."""
    due = []
    candidates = session.scalars(
        select(Job).where(
            Job.status == JobStatus.QUEUED, or_(Job.retry_at.is_(None), Job.retry_at <= at)
        )
    )
    for job in candidates:
        if job.retry_at is not None and job.sent_at is None:
            due.append(job)  # deferred: its retry time has come, send it now
            continue
        last = job.sent_at or job.enqueued_at or job.created_at
        wait = min(max_backoff_s, grace_s * 2 ** max(0, (job.sends or 0) - 1))
        if at - last >= wait:
            due.append(job)
    return due
