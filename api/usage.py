"""/v1/usage (extension): the caller's tenant usage beside its quotas."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import CurrentKey, SessionDep, SettingsDep
from api.errors import responses
from core.models import Tenant
from core.usage import tenant_usage

router = APIRouter(tags=["Usage"])


class Measure(BaseModel):
    used: int
    limit: int = Field(description="0 means unlimited.")


class RateLimit(BaseModel):
    requests_per_second: float = Field(description="Sustained requests per second per API key.")
    burst: int = Field(description="Requests per API key in a burst.")


class UsageRead(BaseModel):
    object: Literal["organization.usage"] = "organization.usage"
    organization_id: str
    organization: str
    period_start: int = Field(description="Start of this calendar month (UTC), Unix seconds.")
    period_end: int = Field(description="Start of the next month: the token quota resets then.")
    running_jobs: Measure
    queued_jobs: Measure
    files: Measure = Field(description="Stored files (neither deleted nor expired).")
    stored_bytes: Measure
    trained_tokens_this_month: Measure = Field(
        description="Succeeded jobs' trained tokens this month plus unfinished jobs' estimates."
    )
    max_job_tokens: int = Field(description="Largest job, in estimated trained tokens (0: none).")
    max_job_wall_clock_s: int = Field(description="Running time of one job (0: unlimited).")
    priority: float = Field(description="Fair-scheduling weight (1 by default).")
    rate_limit: RateLimit


@router.get(
    "/usage",
    response_model=UsageRead,
    summary="Your usage and limits (extension)",
    description="Jobs running and queued, files and bytes stored, and tokens trained this "
    "month, each beside its limit; the largest job, scheduling priority and request rate limit.",
    responses=responses(401),
)
def get_usage(key: CurrentKey, session: SessionDep, settings: SettingsDep) -> UsageRead:
    tenant = session.scalars(select(Tenant).where(Tenant.id == key.tenant_id)).one()
    return UsageRead(**tenant_usage(session, tenant, settings=settings))
