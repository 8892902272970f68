"""Per-tenant quotas: provider-wide defaults in settings, overridden by the tenant's policy.

Checked by the API before it accepts work (a job create, an upload) and by the fair claim
(running jobs). A limit of 0 means unlimited. What counts (docs/quotas.md):

* queued jobs: the tenant's jobs in ``queued`` or ``validating_files``;
* running jobs: jobs in ``running`` (enforced when a worker claims, not at create);
* files and bytes: files neither deleted nor expired (expired bytes are purged by the sweeper);
* trained tokens this month (UTC calendar month): succeeded jobs' ``trained_tokens`` finished
  this month plus the estimates of the tenant's unfinished jobs, so a burst of creates cannot
  overrun the month; failed and cancelled jobs are not charged;
* the largest job: an estimate of its trained tokens, made at create (``estimate_tokens``).
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from core.config import Settings
from core.models import File, Job, Tenant, now

# Bytes per token for the estimate: ~4 for English text with BPE tokenizers (OpenAI's rule of
# thumb); the estimate is an upper bound because each example is also cut at max_seq_len.
BYTES_PER_TOKEN = 4
QUEUED_STATUSES = ("queued", "validating_files")
UNFINISHED_STATUSES = ("validating_files", "queued", "running", "paused")
# When a slot may free up is unknown (another job must finish): a client retries after this.
JOB_SLOT_RETRY_AFTER_S = 30
STORAGE_RETRY_AFTER_S = 3600


class QuotaExceeded(Exception):
    """A request over a limit. ``status`` 429 (retry later) or 400 (a single job too large to
    ever fit); ``retryable`` False when waiting alone cannot help (delete files, next month)."""

    def __init__(
        self,
        limit: str,
        value: int,
        message: str,
        *,
        retry_after_s: int,
        status: int = 429,
        retryable: bool = True,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.limit, self.value, self.message = limit, value, message
        self.retry_after_s, self.status, self.retryable = retry_after_s, status, retryable
        self.param = param


@dataclass(frozen=True)
class Limits:
    """A tenant's effective limits (0 = unlimited) and scheduling priority."""

    max_running_jobs: int
    max_queued_jobs: int
    max_files: int
    max_stored_bytes: int
    max_trained_tokens_per_month: int
    max_job_tokens: int
    max_job_wall_clock_s: int
    priority: float = 1.0

    @classmethod
    def defaults(cls, settings: Settings) -> Limits:
        return cls(
            max_running_jobs=settings.max_running_jobs_per_tenant,
            max_queued_jobs=settings.max_queued_jobs_per_tenant,
            max_files=settings.max_files_per_tenant,
            max_stored_bytes=settings.max_stored_bytes_per_tenant,
            max_trained_tokens_per_month=settings.max_trained_tokens_per_month,
            max_job_tokens=settings.max_job_tokens,
            max_job_wall_clock_s=settings.max_job_wall_clock_s,
        )

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


POLICY_KEYS = tuple(f.name for f in fields(Limits))


def limits_for(policy: dict[str, Any] | None, *, settings: Settings) -> Limits:
    """Settings, with every key the tenant's policy sets (non-null) replacing its default."""
    values = Limits.defaults(settings).as_dict()
    for name in POLICY_KEYS:
        override = (policy or {}).get(name)
        if override is not None:
            values[name] = type(values[name])(override)
    return Limits(**values)


def tenant_limits(session: Session, tenant_id: str, *, settings: Settings) -> Limits:
    policy = session.scalar(select(Tenant.policy).where(Tenant.id == tenant_id))
    return limits_for(policy, settings=settings)


def estimate_tokens(*, file_bytes: int, n_examples: int, n_epochs: int, max_seq_len: int) -> int:
    """Trained tokens of a job, before training: the file's bytes / 4, capped by every example
    cut at max_seq_len, times the epochs."""
    per_epoch = min(file_bytes // BYTES_PER_TOKEN + 1, max(n_examples, 1) * max_seq_len)
    return int(per_epoch) * max(int(n_epochs), 1)


def month_start(ts: float) -> int:
    t = time.gmtime(ts)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))


def next_month_start(ts: float) -> int:
    t = time.gmtime(ts)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0))


def count_jobs(session: Session, tenant_id: str, statuses: tuple[str, ...]) -> int:
    return int(
        session.scalar(
            select(func.count()).where(Job.tenant_id == tenant_id, Job.status.in_(statuses))
        )
        or 0
    )


def tokens_this_month(session: Session, tenant_id: str, *, at: float | None = None) -> int:
    """Succeeded jobs' trained tokens this month plus unfinished jobs' estimates."""
    start = month_start(at if at is not None else now())
    trained = session.scalar(
        select(func.coalesce(func.sum(Job.trained_tokens), 0)).where(
            Job.tenant_id == tenant_id, Job.status == "succeeded", Job.finished_at >= start
        )
    )
    pending = session.scalar(
        select(func.coalesce(func.sum(Job.estimated_tokens), 0)).where(
            Job.tenant_id == tenant_id, Job.status.in_(UNFINISHED_STATUSES)
        )
    )
    return int(trained or 0) + int(pending or 0)


def stored_files(session: Session, tenant_id: str) -> tuple[int, int]:
    """(files, bytes) the tenant stores: neither deleted nor expired."""
    count, total = session.execute(
        select(func.count(), func.coalesce(func.sum(File.bytes), 0)).where(
            File.tenant_id == tenant_id,
            File.deleted_at.is_(None),
            or_(File.expires_at.is_(None), File.expires_at > now()),
        )
    ).one()
    return int(count), int(total)


def check_job_create(
    session: Session, *, tenant_id: str, limits: Limits, estimated_tokens: int
) -> None:
    """Raise ``QuotaExceeded`` when one more job of ``estimated_tokens`` is over a limit."""
    if limits.max_job_tokens and estimated_tokens > limits.max_job_tokens:
        raise QuotaExceeded(
            "max_job_tokens",
            limits.max_job_tokens,
            f"This job would train about {estimated_tokens:,} tokens (training file and "
            f"n_epochs), over the limit of {limits.max_job_tokens:,} tokens per job "
            "(max_job_tokens). Use fewer epochs or a smaller file.",
            retry_after_s=0,
            status=400,
            retryable=False,
            param="training_file",
        )
    if limits.max_queued_jobs:
        queued = count_jobs(session, tenant_id, QUEUED_STATUSES)
        if queued >= limits.max_queued_jobs:
            raise QuotaExceeded(
                "max_queued_jobs",
                limits.max_queued_jobs,
                f"You have {queued} queued jobs, the limit (max_queued_jobs) is "
                f"{limits.max_queued_jobs}. Retry when some have started, or cancel some.",
                retry_after_s=JOB_SLOT_RETRY_AFTER_S,
            )
    if limits.max_trained_tokens_per_month:
        used = tokens_this_month(session, tenant_id)
        if used + estimated_tokens > limits.max_trained_tokens_per_month:
            raise QuotaExceeded(
                "max_trained_tokens_per_month",
                limits.max_trained_tokens_per_month,
                f"This job (about {estimated_tokens:,} tokens) would bring this month's trained "
                f"tokens to {used + estimated_tokens:,}, over the limit of "
                f"{limits.max_trained_tokens_per_month:,} (max_trained_tokens_per_month).",
                retry_after_s=max(1, next_month_start(now()) - now()),
                retryable=False,
            )


def check_upload(
    session: Session, *, tenant_id: str, limits: Limits, incoming_bytes: int = 0
) -> None:
    """Raise ``QuotaExceeded`` when one more file of ``incoming_bytes`` is over a limit."""
    count, total = stored_files(session, tenant_id)
    if limits.max_files and count >= limits.max_files:
        raise QuotaExceeded(
            "max_files",
            limits.max_files,
            f"You store {count} files, the limit (max_files) is {limits.max_files}. "
            "Delete some (DELETE /v1/files/{file_id}) first.",
            retry_after_s=STORAGE_RETRY_AFTER_S,
            retryable=False,
        )
    if limits.max_stored_bytes and total + incoming_bytes > limits.max_stored_bytes:
        raise QuotaExceeded(
            "max_stored_bytes",
            limits.max_stored_bytes,
            f"This upload would bring your stored files to {total + incoming_bytes:,} bytes, "
            f"over the limit of {limits.max_stored_bytes:,} bytes (max_stored_bytes). "
            "Delete some files first.",
            retry_after_s=STORAGE_RETRY_AFTER_S,
            retryable=False,
        )


def charge_running_time(session: Session, job_id: str, seconds: float) -> tuple[float, int | None]:
    """Add ``seconds`` to the job's running time (summed over attempts); returns the new
    running time and the job's wall-clock limit (``None``: unlimited). The caller owns the claim
    (it runs in the same transaction as its heartbeat)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(running_s=Job.running_s + max(0.0, seconds))
        .execution_options(synchronize_session=False)
    )
    running, limit = session.execute(
        select(Job.running_s, Job.wall_clock_limit_s).where(Job.id == job_id)
    ).one()
    return float(running), (int(limit) if limit else None)


def wall_clock_message(*, limit_s: int, step: int | None) -> str:
    return (
        f"The job reached its wall-clock limit of {limit_s:,} s of running time "
        f"(max_job_wall_clock_s) and stopped at step {step}; its checkpoints are kept "
        "(GET /v1/fine_tuning/jobs/{id}/checkpoints)."
    )
