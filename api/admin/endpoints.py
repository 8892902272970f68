"""/admin: provider routes. Deny by default: every route needs an admin key (403 otherwise)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.admin import service
from api.admin.schemas import ModelRegister
from api.deps import SessionDep, SettingsDep, admin_key
from api.errors import responses
from api.jobs import service as jobs_service
from api.jobs.schemas import JobList, JobRead, JobStatusName
from api.models.schemas import ModelRead
from api.models.service import base_model_read
from api.pagination import page_of
from core.models import Job

# The dependency sits on the router, so a route added here later cannot forget it.
router = APIRouter(
    prefix="/admin",
    tags=["Admin"],
    dependencies=[Depends(admin_key)],
    responses=responses(401, 403),
)


@router.post(
    "/models",
    response_model=ModelRead,
    status_code=201,
    summary="Register a local base model",
    description="Registers a Hugging Face model directory on the server (it must hold config.json).",
    responses=responses(400, 409),
)
def register_model(body: ModelRegister, session: SessionDep) -> ModelRead:
    return base_model_read(service.register_model(session=session, body=body))


@router.get(
    "/jobs",
    response_model=JobList,
    summary="List every tenant's jobs",
    description="Newest first; `organization_id` names the tenant.",
    responses=responses(400),
)
def list_all_jobs(
    session: SessionDep,
    settings: SettingsDep,
    after: Annotated[
        str | None, Query(description="Id of the last job of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
    status: Annotated[JobStatusName | None, Query()] = None,
    organization_id: Annotated[
        str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Only this tenant's jobs.")
    ] = None,
) -> JobList:
    scope = (Job.tenant_id == organization_id,) if organization_id else ()
    rows, has_more = jobs_service.list_jobs(
        session=session,
        scope=scope,
        after=after,
        limit=min(limit, settings.page_limit_max),
        status=status,
    )
    return JobList(**page_of([JobRead.from_row(r) for r in rows], has_more))
