"""/v1/fine_tuning/jobs: create, list, retrieve, cancel/pause/resume, events, checkpoints."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentKey, QueueDep, SessionDep, SettingsDep, StoreDep
from api.errors import BadRequest, ErrorResponse, responses
from api.jobs import service
from api.jobs.adapter import AdapterArchive
from api.jobs.schemas import (
    CheckpointList,
    CheckpointRead,
    EventList,
    EventRead,
    JobCreate,
    JobList,
    JobRead,
)
from api.pagination import page_of
from core.models import Job

router = APIRouter(prefix="/fine_tuning/jobs", tags=["Fine-tuning"])

JobId = Annotated[str, Path(description="The job's id (ftjob-…).", max_length=64)]
After = Annotated[str | None, Query(description="Id of the last object of the previous page.")]
METADATA_PARAM = re.compile(r"^metadata\[(.+)\]$")
METADATA_QUERY_DOC = {
    "parameters": [
        {
            "name": "metadata",
            "in": "query",
            "required": False,
            "style": "deepObject",
            "explode": True,
            "description": "Filter on metadata pairs: metadata[key]=value (all must match).",
            "schema": {"type": "object", "additionalProperties": {"type": "string"}},
        }
    ]
}


def metadata_filter(request: Request) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        match = METADATA_PARAM.match(name)
        if match:
            key = match.group(1)
            if len(key) > 64 or len(value) > 512 or "\x00" in key + value:
                raise BadRequest("Invalid metadata filter key or value.", param=name[:80])
            found[key] = value
    if len(found) > 16:
        raise BadRequest("At most 16 metadata filters.", param="metadata")
    return found


@router.post(
    "",
    response_model=JobRead,
    summary="Create a fine-tuning job",
    description=(
        "Validates the model, files and hyperparameters, stores the job as `queued` and sends it "
        "to the workers. Identical requests (same body and `Idempotency-Key`, if any) within the "
        "idempotency window return the job already created instead of a second one. Over a "
        "quota (queued jobs, trained tokens this month) the answer is 429 with Retry-After; a "
        "job larger than max_job_tokens is a 400."
    ),
    responses=responses(400, 401, 429),
)
def create_job(
    body: JobCreate,
    response: Response,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    idempotency_key: Annotated[
        str | None, Header(max_length=255, description="Optional client token for safe retries.")
    ] = None,
) -> JobRead:
    job, created = service.create_job(
        session=session,
        settings=settings,
        tenant_id=key.tenant_id,
        body=body,
        idempotency_key=idempotency_key,
        enqueue=queue.send_run_job,
    )
    if not created:
        response.headers["idempotent-replayed"] = "true"
    return JobRead.from_row(job)


def _job_page(rows: list[Job], has_more: bool) -> JobList:
    return JobList(**page_of([JobRead.from_row(r) for r in rows], has_more))


@router.get(
    "",
    response_model=JobList,
    summary="List fine-tuning jobs",
    description="Newest first. Filter with metadata[key]=value.",
    responses=responses(400, 401),
    openapi_extra=METADATA_QUERY_DOC,
)
def list_jobs(
    request: Request,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
) -> JobList:
    rows, has_more = service.list_jobs(
        session=session,
        scope=(Job.tenant_id == key.tenant_id,),
        after=after,
        limit=min(limit, settings.page_limit_max),
        metadata=metadata_filter(request),
    )
    return _job_page(rows, has_more)


@router.get(
    "/{fine_tuning_job_id}",
    response_model=JobRead,
    summary="Retrieve a fine-tuning job",
    responses=responses(401, 404),
)
async def get_job(fine_tuning_job_id: JobId, key: CurrentKey, session: SessionDep) -> Response:
    # The polling hot path: one trip to the thread pool (query, serialise, give the connection
    # back), and the JSON written once by pydantic instead of FastAPI validating the JobRead
    # against response_model again and encoding it with json.dumps.
    def read() -> bytes:
        try:
            row = service.get_job(
                session=session, tenant_id=key.tenant_id, job_id=fine_tuning_job_id
            )
            return JobRead.from_row(row).model_dump_json().encode()
        finally:
            session.close()

    return Response(await run_in_threadpool(read), media_type="application/json")


@router.post(
    "/{fine_tuning_job_id}/cancel",
    response_model=JobRead,
    summary="Cancel a fine-tuning job",
    description="Any unfinished job; a finished one gives 409 (`x-should-retry: false`).",
    responses=responses(401, 404, 409),
)
def cancel_job(fine_tuning_job_id: JobId, key: CurrentKey, session: SessionDep) -> JobRead:
    return JobRead.from_row(
        service.cancel_job(session=session, tenant_id=key.tenant_id, job_id=fine_tuning_job_id)
    )


@router.post(
    "/{fine_tuning_job_id}/pause",
    response_model=JobRead,
    summary="Pause a running fine-tuning job",
    description="Running jobs only; the worker checkpoints and stops. Status becomes `paused`.",
    responses=responses(401, 404, 409),
)
def pause_job(fine_tuning_job_id: JobId, key: CurrentKey, session: SessionDep) -> JobRead:
    return JobRead.from_row(
        service.pause_job(session=session, tenant_id=key.tenant_id, job_id=fine_tuning_job_id)
    )


@router.post(
    "/{fine_tuning_job_id}/resume",
    response_model=JobRead,
    summary="Resume a paused fine-tuning job",
    description="Paused jobs only; the job is queued again and resumes from its last checkpoint.",
    responses=responses(401, 404, 409),
)
def resume_job(
    fine_tuning_job_id: JobId, key: CurrentKey, session: SessionDep, queue: QueueDep
) -> JobRead:
    return JobRead.from_row(
        service.resume_job(
            session=session,
            tenant_id=key.tenant_id,
            job_id=fine_tuning_job_id,
            enqueue=queue.send_run_job,
        )
    )


@router.get(
    "/{fine_tuning_job_id}/events",
    response_model=EventList,
    summary="List a job's events",
    description="Newest first.",
    responses=responses(400, 401, 404),
)
def list_events(
    fine_tuning_job_id: JobId,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
) -> EventList:
    rows, has_more = service.list_events(
        session=session,
        tenant_id=key.tenant_id,
        job_id=fine_tuning_job_id,
        after=after,
        limit=min(limit, settings.page_limit_max),
    )
    return EventList(**page_of([EventRead.from_row(r) for r in rows], has_more))


@router.get(
    "/{fine_tuning_job_id}/checkpoints",
    response_model=CheckpointList,
    summary="List a job's checkpoints",
    description=(
        "Newest first. Each checkpoint carries its safety scores (`safety`) and whether it "
        "passed the release gate (`deployable`), null until evaluated."
    ),
    responses=responses(400, 401, 404),
)
def list_checkpoints(
    fine_tuning_job_id: JobId,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10,
) -> CheckpointList:
    rows, has_more = service.list_checkpoints(
        session=session,
        scope=(Job.tenant_id == key.tenant_id,),
        job_id=fine_tuning_job_id,
        after=after,
        limit=min(limit, settings.page_limit_max),
    )
    return CheckpointList(**page_of([CheckpointRead.from_row(r) for r in rows], has_more))


@router.get(
    "/{fine_tuning_job_id}/checkpoints/{checkpoint_id}/adapter",
    response_class=StreamingResponse,
    summary="Download a checkpoint's adapter",
    description=(
        "A tar archive of the checkpoint's PEFT adapter directory (adapter_config.json, "
        "adapter_model.safetensors), for checkpoints that passed the safety release gate "
        "(`deployable: true`) only. Load it with `PeftModel.from_pretrained(base, <dir>)`."
    ),
    responses={
        200: {
            "description": "The adapter directory as an uncompressed tar archive.",
            "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
        },
        **responses(401, 404),
        403: {
            "model": ErrorResponse,
            "description": "The checkpoint failed the safety release gate (code `safety_gate`; "
            "the message quotes its safety scores).",
        },
        409: {
            "model": ErrorResponse,
            "description": "The checkpoint has not been safety-evaluated yet (code "
            "`not_evaluated`, sent with `x-should-retry: false`).",
        },
    },
)
def download_adapter(
    fine_tuning_job_id: JobId,
    checkpoint_id: Annotated[
        str, Path(description="The checkpoint's id (ftckpt-…).", max_length=64)
    ],
    key: CurrentKey,
    session: SessionDep,
    store: StoreDep,
) -> StreamingResponse:
    row, path = service.deployable_adapter(
        session=session,
        store=store,
        tenant_id=key.tenant_id,
        job_id=fine_tuning_job_id,
        checkpoint_id=checkpoint_id,
    )
    archive = AdapterArchive(path, mtime=row.created_at)
    return StreamingResponse(
        iter(archive),
        media_type="application/x-tar",
        headers={
            "content-length": str(archive.length),
            "content-disposition": f'attachment; filename="{row.id}.tar"',
        },
    )
