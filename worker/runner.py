"""Turn one job row into a run: claim it, keep it alive, dispatch on its kind, settle the outcome.

Flow: claim the job (a conditional UPDATE; no row means a duplicate delivery, a cancelled job or
one deferred until later) -> under ``JobReporter.alive()`` (a heartbeat through every phase, and
the stop checks of ``defense.progress.tick``) run ``worker.alignment.run_alignment`` (stage 1) or
``worker.finetune.run_fine_tune`` (stage 2) -> settle what ended the run (``settle``):

* success or a deterministic failure (``JobFailed``): recorded by the steps / failed here, with a
  tenant-safe message (no server paths);
* paused or cancelled: an event; preempted (SIGTERM): the job goes back to ``queued`` without
  using an attempt (after the training loop's checkpoint) and is sent again;
* claim lost: nothing is written (another attempt owns the row);
* environment errors (disk full, I/O): back to ``queued`` with ``retry_at`` (exponential backoff),
  not an attempt, until ``max_env_retries``;
* infrastructure errors (database, broker): the attempt is given back and Celery retries.

The error family is ``worker.errors`` (docs/worker.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import jobs
from core.alignments import ALIGNMENT_KIND
from core.config import Settings
from core.db import session_factory, session_scope
from core.models import Job, now
from core.queue import make_celery, send_run_job
from core.scheduling import claim_next, next_for_tenant
from core.storage import ArtifactStore, job_dir_key
from worker import preemption
from worker.alignment import release_aligned_row, run_alignment
from worker.errors import (
    TRANSIENT_ERRORS,
    ClaimLost,
    EnvironmentFault,
    JobFailed,
    JobStopped,
    Preempted,
    classify,
)
from worker.finetune import run_fine_tune
from worker.reporting import JobReporter

log = logging.getLogger(__name__)

Send = Callable[[str, str], object]
"""Sends a job's task message: ``send(job_id, kind)`` (the kind picks the queue)."""


def run_job(job_id: str, *, settings: Settings, worker_id: str, send: Send | None = None) -> None:
    factory = session_factory(settings.resolved_database_url)
    with session_scope(factory) as session:
        # Fair scheduling: the message is a slot; the fairest queued job of its kind runs.
        claim = claim_next(session, worker_id, settings=settings, preferred=job_id)
    if claim is None:
        log.info("job %s: nothing claimable (duplicate, cancelled or at limits); skipping", job_id)
        return
    if claim.job_id != job_id:
        log.info("job %s: running the fairer queued job %s instead", job_id, claim.job_id)
    job_id = claim.job_id

    send = send or _default_sender(settings)
    store = ArtifactStore(settings.resolved_artifacts_dir)
    reporter = JobReporter(factory, claim, interval_s=settings.heartbeat_interval_s)
    with session_scope(factory) as session:
        kind = session.execute(select(Job.kind).where(Job.id == job_id)).scalar_one()
    try:
        with reporter.alive():
            if kind == ALIGNMENT_KIND:
                reporter.message(f"Alignment job started (attempt {claim.attempt}).")
                run_alignment(job_id, settings=settings, store=store, reporter=reporter, send=send)
            else:
                run_fine_tune(job_id, settings=settings, store=store, reporter=reporter)
    except Exception as err:  # noqa: BLE001 - every outcome is settled on the row
        if settle(err, reporter=reporter, settings=settings, kind=kind, send=send):
            raise
    finally:
        if kind == ALIGNMENT_KIND:
            _after_alignment(factory, job_id=job_id, settings=settings, send=send)
        _send_tenant_next(factory, job_id=job_id, send=send)


def settle(
    err: Exception, *, reporter: JobReporter, settings: Settings, kind: str, send: Send
) -> bool:
    """Record what ended the run; True when the caller must re-raise (Celery retries)."""
    from defense.callbacks import TrainingStopped

    claim, factory = reporter.claim, reporter.factory
    if isinstance(err, TrainingStopped) and preemption.requested():
        err = Preempted("the worker is shutting down")
    if isinstance(err, TrainingStopped | JobStopped):
        if reporter.ownership == jobs.Ownership.LOST:
            return False
        reporter.record_stop(getattr(err, "step", None))
        return False
    if isinstance(err, ClaimLost):
        log.warning("job %s: claim lost; stopped without writing", claim.job_id)
        return False
    if isinstance(err, Preempted):
        with session_scope(factory) as session:
            given = jobs.give_back(session, claim)
            if given:
                jobs.add_event(
                    session,
                    _job(session, claim.job_id),
                    "The worker was stopped; the job is back in the queue and resumes from its "
                    "last checkpoint (this attempt is not counted).",
                    level="warn",
                )
        if given:
            _send(factory, send, claim.job_id, kind)
        return False
    if isinstance(err, TRANSIENT_ERRORS):
        _give_back_quietly(factory, claim, patience_s=settings.stale_after_s)
        return True
    error = classify(err)
    if isinstance(error, EnvironmentFault):
        _defer(factory, claim, error, settings=settings)
        return False
    if not isinstance(error, JobFailed):  # pragma: no cover - every WorkerError is handled above
        error = JobFailed(error.code, error.message, error.param)
    if error.code == "training_error":
        log.error("job %s failed", claim.job_id, exc_info=err)
    _fail(factory, claim, error)
    return False


def _defer(
    factory: sessionmaker[Session], claim: jobs.Claim, err: EnvironmentFault, *, settings: Settings
) -> None:
    """Back to queued with a retry time (backoff doubles per retry), or failed after
    ``max_env_retries`` environment errors in a row."""
    with session_scope(factory) as session:
        job = _job(session, claim.job_id)
        retries = int(job.env_retries or 0)
        if retries >= settings.max_env_retries:
            if jobs.fail(
                session,
                claim,
                code="environment_error",
                message=f"The worker's environment failed {retries + 1} times: {err.message}",
            ):
                jobs.add_event(session, job, f"Job failed: {err.message}", level="error")
            return
        delay = min(settings.env_retry_max_s, settings.env_retry_base_s * 2**retries)
        if jobs.defer(session, claim, retry_at=now() + int(delay)):
            jobs.add_event(
                session,
                job,
                f"The worker hit an environment error ({err.message}); the job is back in the "
                f"queue and retries in {int(delay)} s from its last checkpoint (this attempt is "
                "not counted).",
                level="warn",
            )


def _after_alignment(
    factory: sessionmaker[Session], *, job_id: str, settings: Settings, send: Send
) -> None:
    try:
        release_aligned_row(factory, job_id=job_id, settings=settings, send=send)
    except Exception:  # noqa: BLE001 - the sweeper re-sends waiting jobs; never mask the job's error
        log.warning("alignment %s: could not release its model row", job_id, exc_info=True)


def _send_tenant_next(factory: sessionmaker[Session], *, job_id: str, send: Send) -> None:
    """A slot of this job's tenant may have freed up: re-send its next queued job, whose own
    message may have been used up while the tenant was at its running limit."""
    try:
        with session_scope(factory) as session:
            tenant_id, kind, status = session.execute(
                select(Job.tenant_id, Job.kind, Job.status).where(Job.id == job_id)
            ).one()
            # Not after a job went back to queued (waiting, released): it has its own message.
            next_id = None
            if status != jobs.JobStatus.QUEUED:
                next_id = next_for_tenant(session, tenant_id, kind=kind)
        if next_id is not None:
            send(next_id, kind)
    except Exception:  # noqa: BLE001 - the sweeper re-sends queued jobs anyway
        log.warning("job %s: could not re-send its tenant's next job", job_id, exc_info=True)


def _default_sender(settings: Settings) -> Send:
    app = None

    def send(job_id: str, kind: str) -> None:
        nonlocal app
        app = app or make_celery(settings)
        send_run_job(app, job_id, kind=kind)

    return send


def _send(factory: sessionmaker[Session], send: Send, job_id: str, kind: str) -> None:
    try:
        send(job_id, kind)
        with session_scope(factory) as session:
            jobs.mark_sent(session, job_id)
    except Exception:  # noqa: BLE001 - the sweeper sends it after its grace period
        log.warning("job %s: could not send it again; the sweeper will", job_id, exc_info=True)


def _fail(factory: sessionmaker[Session], claim: jobs.Claim, err: JobFailed) -> None:
    with session_scope(factory) as session:
        if jobs.fail(session, claim, code=err.code, message=err.message, param=err.param):
            jobs.add_event(
                session, _job(session, claim.job_id), f"Job failed: {err.message}", level="error"
            )


def _give_back_quietly(
    factory: sessionmaker[Session], claim: jobs.Claim, *, patience_s: float = 0.0
) -> None:
    """An infrastructure error (the database or the broker): not the job's fault, so the attempt
    is given back. A short database outage (a restart, a failover) is waited out for up to
    ``patience_s`` (the stale limit: past it the sweeper recovers the job anyway, at the cost of
    an attempt), so it does not use one up."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            with session_scope(factory) as session:
                jobs.give_back(session, claim)
            return
        except Exception:  # noqa: BLE001 - the database may be the thing that is down
            if time.monotonic() >= deadline:
                log.warning(
                    "job %s: could not release the claim; the sweeper will re-queue it",
                    claim.job_id,
                )
                return
            time.sleep(1.0)


def _job(session: Session, job_id: str) -> Job:
    return session.execute(select(Job).where(Job.id == job_id)).scalar_one()


def job_adapter_dir(store_root: Path, job_id: str) -> Path:
    return store_root / job_dir_key(job_id) / "adapter"
