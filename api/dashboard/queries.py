"""Read models for the overview and the jobs list: a few aggregate queries over ``jobs``,
``files``, ``models`` and ``line_reviews``, each selecting only the columns it shows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.jobs import JobStatus
from core.models import File, Job, LineReview, Model, Tenant, Worker, now

DAY_S = 24 * 3600
SCREENING_BACKLOG = ("pending", "queued", "running")


@dataclass(frozen=True)
class RunningJob:
    id: str
    tenant: str
    model: str
    kind: str
    worker_id: str | None
    heartbeat_at: int | None
    step: int
    total_steps: int | None
    stale: bool


def jobs_by_status_and_kind(session: Session) -> dict[str, dict[str, int]]:
    """{kind: {status: count}}."""
    table: dict[str, dict[str, int]] = {}
    rows = session.execute(
        select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
    )
    for kind, status, count in rows:
        table.setdefault(kind, {})[status] = int(count)
    return table


def queue_depth(session: Session) -> tuple[int, int | None]:
    """(queued jobs, enqueued_at of the oldest one)."""
    count, oldest = session.execute(
        select(func.count(), func.min(func.coalesce(Job.enqueued_at, Job.created_at))).where(
            Job.status == JobStatus.QUEUED
        )
    ).one()
    return int(count), oldest


def running_jobs(session: Session, *, stale_after_s: float, limit: int = 100) -> list[RunningJob]:
    cutoff = now() - stale_after_s
    rows = session.execute(
        select(
            Job.id,
            Tenant.name,
            Job.model,
            Job.kind,
            Job.worker_id,
            Job.heartbeat_at,
            Job.step,
            Job.total_steps,
        )
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where(Job.status == JobStatus.RUNNING)
        .order_by(Job.heartbeat_at)
        .limit(limit)
    )
    return [
        RunningJob(
            id=r[0],
            tenant=r[1],
            model=r[2],
            kind=r[3],
            worker_id=r[4],
            heartbeat_at=r[5],
            step=r[6],
            total_steps=r[7],
            stale=r[5] is None or r[5] < cutoff,
        )
        for r in rows
    ]


def failures_by_code(session: Session, *, since: int) -> list[tuple[str, int]]:
    rows = session.execute(
        select(Job.error_code, func.count())
        .where(Job.status == JobStatus.FAILED, Job.finished_at >= since)
        .group_by(Job.error_code)
    )
    counts = sorted(((code or "unknown", int(n)) for code, n in rows), key=lambda r: -r[1])
    return counts


def pending_alignments(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Model.id, Model.base_model, Model.alignment_job_id, Job.status, Job.step)
        .outerjoin(Job, Job.id == Model.alignment_job_id)
        .where(Model.status == "pending")
        .order_by(Model.created_at)
    )
    return [
        {"model": r[0], "base_model": r[1], "job_id": r[2], "job_status": r[3], "step": r[4]}
        for r in rows
    ]


def screening_backlog(session: Session) -> tuple[int, int | None]:
    count, oldest = session.execute(
        select(func.count(), func.min(File.created_at)).where(
            File.safety_status.in_(SCREENING_BACKLOG), File.deleted_at.is_(None)
        )
    ).one()
    return int(count), oldest


def unreviewed_flagged_lines(session: Session) -> int:
    """Flagged lines of all jobs minus the ones an admin decided (a decision can only be made
    on a flagged line, so the difference is exact)."""
    query = select(func.coalesce(func.sum(func.json_array_length(Job.flagged_lines)), 0)).where(
        Job.flagged_lines.is_not(None)
    )
    if session.get_bind().dialect.name == "postgresql":
        # A Python None written explicitly is stored as JSON null, whose length PostgreSQL
        # refuses to take (SQLite answers 0).
        query = query.where(func.json_typeof(Job.flagged_lines) == "array")
    flagged = session.scalar(query)
    decided = session.scalar(select(func.count()).select_from(LineReview))
    return max(0, int(flagged or 0) - int(decided or 0))


def workers_alive(session: Session, *, stale_after_s: float) -> int | None:
    """Running workers whose registry heartbeat is recent (core.workers: the Workers page's
    threshold); the overview reads the registry only here."""
    cutoff = now() - stale_after_s
    value = session.scalar(
        select(func.count())
        .select_from(Worker)
        .where(Worker.stopped_at.is_(None), Worker.last_seen_at >= cutoff)
    )
    return int(value or 0)


@dataclass(frozen=True)
class JobFilters:
    status: str = ""
    tenant: str = ""
    model: str = ""
    defense: str = ""
    error_code: str = ""
    kind: str = ""
    job: str = ""  # a job id, or the end of one

    def query_string(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


def job_rows(
    session: Session, filters: JobFilters, *, page: int, per_page: int
) -> tuple[list[Any], bool]:
    """One page of jobs, newest first, and whether there is a next page."""
    query = select(
        Job.id,
        Tenant.name,
        Job.model,
        Job.kind,
        Job.status,
        Job.defense,
        Job.error_code,
        Job.step,
        Job.total_steps,
        Job.created_at,
        Job.finished_at,
        Job.suffix,
    ).join(Tenant, Tenant.id == Job.tenant_id)
    if filters.status:
        query = query.where(Job.status == filters.status)
    if filters.tenant:
        query = query.where((Tenant.name == filters.tenant) | (Tenant.id == filters.tenant))
    if filters.model:
        query = query.where((Job.model == filters.model) | (Job.served_model == filters.model))
    if filters.defense:
        query = query.where(Job.defense == filters.defense)
    if filters.error_code:
        query = query.where(Job.error_code == filters.error_code)
    if filters.kind:
        query = query.where(Job.kind == filters.kind)
    if filters.job:
        query = query.where(Job.id.endswith(filters.job, autoescape=True))
    rows = list(
        session.execute(
            query.order_by(Job.seq.desc()).offset((page - 1) * per_page).limit(per_page + 1)
        )
    )
    return rows[:per_page], len(rows) > per_page


def filter_choices(session: Session) -> dict[str, list[str]]:
    """Values the filter drop-downs offer (distinct values present in the table)."""

    def distinct(column: Any) -> list[str]:
        return sorted(v for v in session.scalars(select(column).distinct()) if v)

    return {
        "status": [s.value for s in JobStatus],
        "tenant": sorted(session.scalars(select(Tenant.name))),
        "model": distinct(Job.model),
        "defense": distinct(Job.defense),
        "error_code": distinct(Job.error_code),
        "kind": distinct(Job.kind),
    }
