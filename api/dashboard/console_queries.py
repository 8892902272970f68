"""Read models of the Tenants, Models and Files pages (the dashboard's read layer; the quota
code may later provide tenant usage from core, and ``tenant_usage`` is the one place to swap)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.alignments import ALIGNMENT_KIND
from core.models import ApiKey, File, Job, JobEvent, LineReview, Model, Tenant


@dataclass
class Usage:
    jobs_by_status: dict[str, int] = field(default_factory=dict)
    trained_tokens: int = 0
    files: int = 0
    file_bytes: int = 0
    gate_failures: int = 0
    confirmed_harmful: int = 0
    active_keys: int = 0

    @property
    def jobs(self) -> int:
        return sum(self.jobs_by_status.values())


def tenant_usage(session: Session, tenant_ids: list[str] | None = None) -> dict[str, Usage]:
    """Per tenant: jobs by status, trained tokens, stored files and bytes, jobs failed by the
    safety gate, flagged lines an admin confirmed harmful, and active keys. A handful of
    grouped queries, whatever the number of tenants."""
    usage: dict[str, Usage] = defaultdict(Usage)

    def scoped(column: Any) -> tuple[Any, ...]:
        return () if tenant_ids is None else (column.in_(tenant_ids),)

    for tenant_id, status, count, tokens, gate in session.execute(
        select(
            Job.tenant_id,
            Job.status,
            func.count(),
            func.coalesce(func.sum(Job.trained_tokens), 0),
            func.count(Job.error_code).filter(Job.error_code == "safety_gate"),
        )
        .where(*scoped(Job.tenant_id))
        .group_by(Job.tenant_id, Job.status)
    ):
        row = usage[tenant_id]
        row.jobs_by_status[status] = int(count)
        row.trained_tokens += int(tokens or 0)
        row.gate_failures += int(gate or 0)
    for tenant_id, count, size in session.execute(
        select(File.tenant_id, func.count(), func.coalesce(func.sum(File.bytes), 0))
        .where(File.deleted_at.is_(None), *scoped(File.tenant_id))
        .group_by(File.tenant_id)
    ):
        usage[tenant_id].files, usage[tenant_id].file_bytes = int(count), int(size or 0)
    for tenant_id, count in session.execute(
        select(Job.tenant_id, func.count())
        .select_from(LineReview)
        .join(Job, Job.id == LineReview.job_id)
        .where(LineReview.decision == "harmful", *scoped(Job.tenant_id))
        .group_by(Job.tenant_id)
    ):
        usage[tenant_id].confirmed_harmful = int(count)
    for tenant_id, count in session.execute(
        select(ApiKey.tenant_id, func.count())
        .where(ApiKey.revoked_at.is_(None), *scoped(ApiKey.tenant_id))
        .group_by(ApiKey.tenant_id)
    ):
        usage[tenant_id].active_keys = int(count)
    return dict(usage)


def tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.name)))


@dataclass(frozen=True)
class ModelRow:
    model: Model
    user_jobs: int
    alignment: Job | None  # the job that made (or is making) an aligned model
    progress: dict[str, Any] | None  # the alignment job's latest metrics event, while pending


def model_rows(session: Session) -> list[ModelRow]:
    """Base models first, each followed by the models aligned from it (lineage order)."""
    models = list(session.scalars(select(Model).order_by(Model.seq)))
    jobs_per_model = dict(
        session.execute(
            select(Job.model, func.count()).where(Job.kind != ALIGNMENT_KIND).group_by(Job.model)
        ).all()
    )
    alignment_ids = [m.alignment_job_id for m in models if m.alignment_job_id]
    alignments = (
        {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(alignment_ids)))}
        if alignment_ids
        else {}
    )
    rows: list[ModelRow] = []
    for m in models:
        job = alignments.get(m.alignment_job_id or "")
        progress = None
        if job is not None and m.status == "pending":
            latest = session.scalar(
                select(JobEvent.data)
                .where(JobEvent.job_id == job.id, JobEvent.type == "metrics")
                .order_by(JobEvent.seq.desc())
                .limit(1)
            )
            progress = {"step": job.step, "total_steps": job.total_steps, **(latest or {})}
        rows.append(ModelRow(m, int(jobs_per_model.get(m.id, 0)), job, progress))
    by_base: dict[str, list[ModelRow]] = defaultdict(list)
    for row in rows:
        if row.model.base_model:
            by_base[row.model.base_model].append(row)
    ordered: list[ModelRow] = []
    for row in rows:
        if not row.model.base_model or row.model.base_model not in {r.model.id for r in rows}:
            ordered.append(row)
            ordered.extend(by_base.pop(row.model.id, []))
    for rest in by_base.values():  # aligned from a base that is listed after them
        ordered.extend(r for r in rest if r not in ordered)
    return ordered


@dataclass(frozen=True)
class FileFilters:
    tenant: str = ""
    status: str = ""
    safety_status: str = ""

    def query_string(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}


def file_rows(
    session: Session, filters: FileFilters, *, page: int, per_page: int
) -> tuple[list[tuple[File, str]], bool]:
    query = select(File, Tenant.name).join(Tenant, Tenant.id == File.tenant_id)
    if filters.tenant:
        query = query.where(Tenant.name == filters.tenant)
    if filters.status:
        query = query.where(File.status == filters.status)
    if filters.safety_status:
        query = query.where(File.safety_status == filters.safety_status)
    query = query.order_by(File.seq.desc()).offset((page - 1) * per_page).limit(per_page + 1)
    rows = [(f, name) for f, name in session.execute(query)]
    return rows[:per_page], len(rows) > per_page


def file_choices(session: Session) -> dict[str, list[str]]:
    return {
        "tenant": list(session.scalars(select(Tenant.name).order_by(Tenant.name))),
        "status": ["uploaded", "processed", "error"],
        "safety_status": sorted(
            s for s in session.scalars(select(File.safety_status).distinct()) if s
        ),
    }


def jobs_using_file(session: Session, file_id: str) -> list[Job]:
    return list(
        session.scalars(
            select(Job)
            .where((Job.training_file == file_id) | (Job.validation_file == file_id))
            .order_by(Job.seq.desc())
            .limit(50)
        )
    )
