"""/admin routes of the provider console: create tenants, suspend and unsuspend them, create
and revoke their keys, list the worker registry and the audit log. Every state-changing route
here records an audit row (``Audit``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Request

from api.admin import console_service as service
from api.admin.auditing import Audit
from api.admin.console_schemas import (
    AdminActionList,
    AdminActionRead,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyRead,
    Suspend,
    SuspensionRead,
    TenantCreate,
    WorkerList,
    WorkerRead,
)
from api.admin.schemas import TenantRead
from api.deps import QueueDep, SessionDep, SettingsDep, admin_key
from api.errors import responses
from api.jobs import service as jobs_service
from api.jobs.schemas import JobRead
from api.pagination import page_of

router = APIRouter(
    prefix="/admin",
    tags=["Admin"],
    dependencies=[Depends(admin_key)],
    responses=responses(401, 403),
)

TenantName = Annotated[str, Path(description="The tenant's name.", max_length=128)]


@router.post(
    "/tenants",
    response_model=TenantRead,
    status_code=201,
    summary="Create a tenant",
    description="A tenant with no keys yet; create its keys with POST /admin/tenants/{name}/keys.",
    responses=responses(400, 409),
)
def create_tenant(body: TenantCreate, session: SessionDep, audit: Audit) -> TenantRead:
    row = service.create_tenant(session, body.name)
    audit.record("tenant.create", target_type="tenant", target_id=row.name)
    return TenantRead.from_row(row)


@router.post(
    "/tenants/{tenant_name}/suspend",
    response_model=SuspensionRead,
    summary="Suspend a tenant",
    description=(
        "Its keys get 403 `tenant_suspended` on /v1 until it is unsuspended (admin keys keep "
        "working on /admin). With `cancel_queued_jobs`, its jobs that have not started are "
        "cancelled in the same action; running jobs go on."
    ),
    responses=responses(400, 404),
)
def suspend_tenant(
    tenant_name: TenantName,
    session: SessionDep,
    audit: Audit,
    body: Annotated[Suspend | None, Body()] = None,
) -> SuspensionRead:
    cancel = body.cancel_queued_jobs if body else False
    result = service.set_suspended(session, tenant_name, suspended=True, cancel_queued_jobs=cancel)
    audit.record(
        "tenant.suspend",
        target_type="tenant",
        target_id=result.tenant.name,
        detail={
            "cancel_queued_jobs": cancel,
            "cancelled_jobs": result.cancelled_jobs,
            "changed": result.changed,
        },
    )
    return SuspensionRead(
        **TenantRead.from_row(result.tenant).model_dump(),
        changed=result.changed,
        cancelled_jobs=result.cancelled_jobs,
    )


@router.post(
    "/tenants/{tenant_name}/unsuspend",
    response_model=SuspensionRead,
    summary="Unsuspend a tenant",
    description="Its keys work on /v1 again. Jobs cancelled when it was suspended stay cancelled.",
    responses=responses(404),
)
def unsuspend_tenant(tenant_name: TenantName, session: SessionDep, audit: Audit) -> SuspensionRead:
    result = service.set_suspended(session, tenant_name, suspended=False)
    audit.record(
        "tenant.unsuspend",
        target_type="tenant",
        target_id=result.tenant.name,
        detail={"changed": result.changed},
    )
    return SuspensionRead(**TenantRead.from_row(result.tenant).model_dump(), changed=result.changed)


@router.get(
    "/tenants/{tenant_name}/keys",
    response_model=KeyList,
    summary="List a tenant's API keys",
    description="Revoked ones too, oldest first; only each key's display prefix, never the key.",
    responses=responses(404),
)
def list_keys(tenant_name: TenantName, session: SessionDep) -> KeyList:
    return KeyList(data=[KeyRead.from_row(k) for k in service.list_keys(session, tenant_name)])


@router.post(
    "/tenants/{tenant_name}/keys",
    response_model=KeyCreated,
    status_code=201,
    summary="Create an API key for a tenant",
    description="The response carries the key itself once; only its hash is stored.",
    responses=responses(400, 404),
)
def create_key(
    tenant_name: TenantName,
    request: Request,
    session: SessionDep,
    audit: Audit,
    body: Annotated[KeyCreate | None, Body()] = None,
) -> KeyCreated:
    admin = body.admin if body else False
    row, key = service.create_key(
        session, tenant_name, admin=admin, secret=request.app.state.key_secret()
    )
    audit.record(
        "key.create",
        target_type="api_key",
        target_id=row.id,
        detail={"tenant": tenant_name, "admin": admin, "prefix": row.prefix},
    )
    return KeyCreated(**KeyRead.from_row(row).model_dump(), key=key)


@router.post(
    "/keys/{key_id}/revoke",
    response_model=KeyRead,
    summary="Revoke an API key",
    description=(
        "The key is refused from now on (401), and dashboard sessions signed in with it end. "
        "Revoking an already revoked key, or the last active admin key, is a 409."
    ),
    responses=responses(404, 409),
)
def revoke_key(
    key_id: Annotated[str, Path(description="The key's id (key-…).", max_length=64)],
    session: SessionDep,
    audit: Audit,
) -> KeyRead:
    row = service.revoke_key(session, key_id)
    audit.record(
        "key.revoke",
        target_type="api_key",
        target_id=row.id,
        detail={"tenant": row.tenant.name, "prefix": row.prefix},
    )
    return KeyRead.from_row(row)


@router.get(
    "/workers",
    response_model=WorkerList,
    summary="List the worker registry",
    description=(
        "Every worker process as it reports itself (alive or stale), and those stopped in the "
        "last 24 hours. Stale: silent for three registry heartbeats (at least 30 s)."
    ),
)
def list_workers(session: SessionDep, settings: SettingsDep) -> WorkerList:
    rows = service.list_workers(session, heartbeat_interval_s=settings.heartbeat_interval_s)
    return WorkerList(data=[WorkerRead.from_row(row, status) for row, status in rows])  # type: ignore[arg-type]


@router.get(
    "/audit",
    response_model=AdminActionList,
    summary="List admin actions",
    description="Every state-changing admin action (dashboard or /admin), newest first.",
    responses=responses(400),
)
def list_audit(
    session: SessionDep,
    settings: SettingsDep,
    after: Annotated[
        str | None, Query(description="Id of the last action of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
    action: Annotated[str | None, Query(max_length=64, description="Only this action.")] = None,
    target_id: Annotated[
        str | None, Query(max_length=256, description="Only actions on this object.")
    ] = None,
) -> AdminActionList:
    rows, has_more = service.list_actions(
        session,
        after=after,
        limit=min(limit, settings.page_limit_max),
        action=action,
        target_id=target_id,
    )
    return AdminActionList(**page_of([AdminActionRead.from_row(r) for r in rows], has_more))


AnyJobId = Annotated[str, Path(description="Any tenant's job id (ftjob-…).", max_length=64)]


def _act(action: str, job_id: str, session: SessionDep, queue: QueueDep, audit: Audit) -> JobRead:
    if action == "cancel":
        job = jobs_service.cancel_job(session=session, tenant_id=None, job_id=job_id)
    elif action == "pause":
        job = jobs_service.pause_job(session=session, tenant_id=None, job_id=job_id)
    else:
        job = jobs_service.resume_job(
            session=session, tenant_id=None, job_id=job_id, enqueue=queue.send_run_job
        )
    audit.record(
        f"job.{action}", target_type="job", target_id=job.id, detail={"status": job.status}
    )
    return JobRead.from_row(job)


@router.post(
    "/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
    response_model=JobRead,
    summary="Cancel any tenant's job",
    description="As /v1/fine_tuning/jobs/{id}/cancel, for any tenant's job (409 once finished).",
    responses=responses(404, 409),
)
def cancel_job(
    fine_tuning_job_id: AnyJobId, session: SessionDep, queue: QueueDep, audit: Audit
) -> JobRead:
    return _act("cancel", fine_tuning_job_id, session, queue, audit)


@router.post(
    "/fine_tuning/jobs/{fine_tuning_job_id}/pause",
    response_model=JobRead,
    summary="Pause any tenant's running job",
    description="As /v1/fine_tuning/jobs/{id}/pause, for any tenant's job (running jobs only).",
    responses=responses(404, 409),
)
def pause_job(
    fine_tuning_job_id: AnyJobId, session: SessionDep, queue: QueueDep, audit: Audit
) -> JobRead:
    return _act("pause", fine_tuning_job_id, session, queue, audit)


@router.post(
    "/fine_tuning/jobs/{fine_tuning_job_id}/resume",
    response_model=JobRead,
    summary="Resume any tenant's paused job",
    description="As /v1/fine_tuning/jobs/{id}/resume, for any tenant's job (paused jobs only).",
    responses=responses(404, 409),
)
def resume_job(
    fine_tuning_job_id: AnyJobId, session: SessionDep, queue: QueueDep, audit: Audit
) -> JobRead:
    return _act("resume", fine_tuning_job_id, session, queue, audit)
