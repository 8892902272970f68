"""A tenant's usage beside its limits: what ``GET /v1/usage`` (the tenant) and
``GET /admin/tenants/{name}/usage`` (the provider) show."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import Settings
from core.models import Tenant, now
from core.quotas import (
    QUEUED_STATUSES,
    count_jobs,
    limits_for,
    month_start,
    next_month_start,
    stored_files,
    tokens_this_month,
)


@dataclass(frozen=True)
class Measure:
    used: int
    limit: int  # 0 = unlimited


def tenant_usage(session: Session, tenant: Tenant, *, settings: Settings) -> dict[str, Any]:
    limits = limits_for(tenant.policy, settings=settings)
    files, stored = stored_files(session, tenant.id)
    ts = now()
    measures = {
        "running_jobs": Measure(
            count_jobs(session, tenant.id, ("running",)), limits.max_running_jobs
        ),
        "queued_jobs": Measure(
            count_jobs(session, tenant.id, QUEUED_STATUSES), limits.max_queued_jobs
        ),
        "files": Measure(files, limits.max_files),
        "stored_bytes": Measure(stored, limits.max_stored_bytes),
        "trained_tokens_this_month": Measure(
            tokens_this_month(session, tenant.id, at=ts), limits.max_trained_tokens_per_month
        ),
    }
    return {
        "organization_id": tenant.id,
        "organization": tenant.name,
        "period_start": month_start(ts),
        "period_end": next_month_start(ts),
        **{name: {"used": m.used, "limit": m.limit} for name, m in measures.items()},
        "max_job_tokens": limits.max_job_tokens,
        "max_job_wall_clock_s": limits.max_job_wall_clock_s,
        "priority": limits.priority,
        "rate_limit": {
            "requests_per_second": settings.rate_limit_rps,
            "burst": settings.rate_limit_burst,
        },
    }


def usage_by_name(session: Session, name: str, *, settings: Settings) -> dict[str, Any] | None:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    return None if tenant is None else tenant_usage(session, tenant, settings=settings)
