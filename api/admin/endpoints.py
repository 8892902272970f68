"""/admin: provider routes. Deny by default: every route needs an admin key (403 otherwise)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from sqlalchemy.orm import Session

from api.admin import service
from api.admin.auditing import Audit
from api.admin.schemas import (
    AdminModelList,
    AdminModelRead,
    AlignmentCreate,
    FlaggedLineList,
    ModelPolicyUpdate,
    ModelRegister,
    TenantList,
    TenantPolicyUpdate,
    TenantRead,
)
from api.deps import AdminKey, QueueDep, SessionDep, SettingsDep, admin_key
from api.errors import NotFound, responses
from api.jobs import service as jobs_service
from api.jobs.schemas import CheckpointList, CheckpointRead, JobList, JobRead, JobStatusName
from api.models.schemas import ModelRead
from api.models.service import model_read
from api.pagination import page_of
from api.usage import UsageRead
from core.alignments import alignment_progress
from core.models import Job, Model
from core.usage import usage_by_name

# The dependency sits on the router, so a route added here later cannot forget it.
router = APIRouter(
    prefix="/admin",
    tags=["Admin"],
    dependencies=[Depends(admin_key)],
    responses=responses(401, 403),
)

After = Annotated[str | None, Query(description="Id of the last object of the previous page.")]
JobId = Annotated[str, Path(description="Any tenant's job id (ftjob-…).", max_length=64)]


def admin_model_read(row: Model, session: Session | None = None) -> AdminModelRead:
    return AdminModelRead(
        alignment=alignment_progress(session, row) if session is not None else None,
        **model_read(row).model_dump(),
        source=row.source,
        path=row.path,
        adapter_path=row.adapter_path,
        alignment_job_id=row.alignment_job_id,
        policy=row.policy or {},
    )


@router.post(
    "/models",
    response_model=ModelRead,
    status_code=201,
    summary="Register a local base model",
    description="Registers a Hugging Face model directory on the server (it must hold config.json).",
    responses=responses(400, 409),
)
def register_model(body: ModelRegister, session: SessionDep, audit: Audit) -> ModelRead:
    row = service.register_model(session=session, body=body)
    audit.record("model.register", target_type="model", target_id=row.id, detail={"path": row.path})
    return model_read(row)


@router.get(
    "/models",
    response_model=AdminModelList,
    summary="List every model with its policy",
    description="Base, aligned and errored models, newest first, with paths and provider policy.",
)
def list_models(session: SessionDep) -> AdminModelList:
    return AdminModelList(
        data=[admin_model_read(m, session) for m in service.list_models(session=session)]
    )


@router.get(
    "/models/{model_id:path}",
    response_model=AdminModelRead,
    summary="Get one model with its policy (and a pending alignment's progress)",
    description="A pending aligned model shows its alignment job's step, percent and time left.",
    responses=responses(404),
)
def get_model(
    model_id: Annotated[str, Path(description="A base or aligned model id.")],
    session: SessionDep,
) -> AdminModelRead:
    return admin_model_read(service.get_model(session=session, model_id=model_id), session)


@router.patch(
    "/models/{model_id:path}",
    response_model=AdminModelRead,
    summary="Set a model's policy",
    description=(
        "Which model jobs naming this one train (`serve`) and with which defense (`defense`, "
        "`allow_sft`, `tau`). Keys left out are kept; keys set to null are removed, so the "
        "server's settings apply again. Jobs already created keep what they recorded; the worker "
        "re-resolves the policy when it starts a queued job."
    ),
    responses=responses(400, 404),
)
def update_model_policy(
    model_id: Annotated[str, Path(description="A base or aligned model id.")],
    body: ModelPolicyUpdate,
    session: SessionDep,
    audit: Audit,
) -> AdminModelRead:
    row = service.update_model_policy(session=session, model_id=model_id, body=body)
    audit.record(
        "model.policy",
        target_type="model",
        target_id=row.id,
        detail={"patch": body.policy.model_dump(exclude_unset=True), "policy": row.policy},
    )
    return admin_model_read(row)


@router.get(
    "/tenants",
    response_model=TenantList,
    summary="List tenants",
    description="Oldest first, with their release policy.",
    responses=responses(400),
)
def list_tenants(
    session: SessionDep,
    settings: SettingsDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
) -> TenantList:
    rows, has_more = service.list_tenants(
        session=session, after=after, limit=min(limit, settings.page_limit_max)
    )
    return TenantList(**page_of([TenantRead.from_row(r) for r in rows], has_more))


@router.patch(
    "/tenants/{tenant_name}",
    response_model=TenantRead,
    summary="Set a tenant's release policy, quotas and priority",
    description=(
        "`safety_gate_margin`: how far a checkpoint's harmful score may rise above its starting "
        "model's and still be deployable. Quotas (`max_running_jobs`, `max_queued_jobs`, "
        "`max_files`, `max_stored_bytes`, `max_trained_tokens_per_month`, `max_job_tokens`, "
        "`max_job_wall_clock_s`; 0 is unlimited) and the fair-scheduling `priority` override "
        "the server's settings; `safety_gate_max_harmful`: the highest harmful score any deployable "
        "checkpoint may have. Null removes a key (the server's setting applies)."
    ),
    responses=responses(400, 404),
)
def update_tenant_policy(
    tenant_name: Annotated[str, Path(description="The tenant's name.", max_length=128)],
    body: TenantPolicyUpdate,
    session: SessionDep,
    audit: Audit,
) -> TenantRead:
    row = service.update_tenant_policy(session=session, name=tenant_name, body=body)
    audit.record(
        "tenant.policy",
        target_type="tenant",
        target_id=row.name,
        detail={"patch": body.policy.model_dump(exclude_unset=True), "policy": row.policy},
    )
    return TenantRead.from_row(row)


@router.get(
    "/tenants/{tenant_name}/usage",
    response_model=UsageRead,
    summary="A tenant's usage and limits",
    description="What the tenant sees at GET /v1/usage.",
    responses=responses(404),
)
def tenant_usage(
    tenant_name: Annotated[str, Path(description="The tenant's name.", max_length=128)],
    session: SessionDep,
    settings: SettingsDep,
) -> UsageRead:
    found = usage_by_name(session, tenant_name, settings=settings)
    if found is None:
        raise NotFound(f"No such tenant: {tenant_name[:128]!r}", param="tenant_name")
    return UsageRead(**found)


@router.post(
    "/alignments",
    response_model=JobRead,
    summary="Align a base model",
    description=(
        "Queues the stage-1 alignment of a base model (a job with `kind: alignment`, owned by "
        "this key's tenant: watch, pause or cancel it through /v1/fine_tuning/jobs). Its model "
        "`<base>-<method>` is listed as `pending` until the job succeeds; user jobs on the base "
        "wait for it. While that alignment is unfinished, the same request returns its job again "
        "(header `idempotent-replayed: true`) and a different one is a 409."
    ),
    responses=responses(400, 409),
)
def create_alignment(
    body: AlignmentCreate,
    response: Response,
    key: AdminKey,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    audit: Audit,
) -> JobRead:
    job, created = service.create_alignment(
        session=session,
        settings=settings,
        tenant_id=key.tenant_id,
        body=body,
        enqueue=queue.send_alignment_job,
    )
    if created:
        audit.record(
            "alignment.create",
            target_type="job",
            target_id=job.id,
            detail={"request": body.model_dump(exclude_unset=True), "model": job.served_model},
        )
    else:
        response.headers["idempotent-replayed"] = "true"
    return JobRead.from_row(job)


@router.get(
    "/alignments",
    response_model=JobList,
    summary="List alignment jobs",
    description="Newest first.",
    responses=responses(400),
)
def list_alignments(
    session: SessionDep,
    settings: SettingsDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
) -> JobList:
    rows, has_more = service.list_alignments(
        session=session, after=after, limit=min(limit, settings.page_limit_max)
    )
    return JobList(**page_of([JobRead.from_row(r) for r in rows], has_more))


@router.get(
    "/alignments/{alignment_id}",
    response_model=JobRead,
    summary="Retrieve an alignment job",
    responses=responses(404),
)
def get_alignment(
    alignment_id: Annotated[str, Path(description="The alignment job's id.", max_length=64)],
    session: SessionDep,
) -> JobRead:
    return JobRead.from_row(service.get_alignment(session=session, alignment_id=alignment_id))


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


@router.get(
    "/fine_tuning/jobs/{fine_tuning_job_id}/flagged_lines",
    response_model=FlaggedLineList,
    summary="List a job's flagged training lines",
    description=(
        "The training lines Antibody down-weighted most (mean weight below "
        "flag_relative_weight of their batches'), lowest first; recorded after training."
    ),
    responses=responses(404),
)
def flagged_lines(fine_tuning_job_id: JobId, session: SessionDep) -> FlaggedLineList:
    return FlaggedLineList.from_job(
        jobs_service.find_job(session=session, scope=(), job_id=fine_tuning_job_id)
    )


@router.get(
    "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
    response_model=CheckpointList,
    summary="List any job's checkpoints",
    description="Newest first, with their safety scores and gate decision, for any tenant's job.",
    responses=responses(400, 404),
)
def list_checkpoints(
    fine_tuning_job_id: JobId,
    session: SessionDep,
    settings: SettingsDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10,
) -> CheckpointList:
    rows, has_more = jobs_service.list_checkpoints(
        session=session,
        scope=(),
        job_id=fine_tuning_job_id,
        after=after,
        limit=min(limit, settings.page_limit_max),
    )
    return CheckpointList(**page_of([CheckpointRead.from_row(r) for r in rows], has_more))
