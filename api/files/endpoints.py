"""/v1/files: upload (streamed and validated), list, retrieve, delete, download."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentKey, QueueDep, SessionDep, SettingsDep, StoreDep
from api.errors import NotFound, responses
from api.files import service
from api.files.schemas import (
    UPLOAD_REQUEST_BODY,
    FileDeleted,
    FileList,
    FileRead,
    FileSafetyReport,
)
from api.files.upload import receive_into_store, run_with_body
from api.pagination import page_of
from api.quotas import check_stored_upload, upload_quota
from core.datasets import DatasetLimits
from core.models import new_id
from core.storage import file_key

router = APIRouter(prefix="/files", tags=["Files"])
FileId = Annotated[str, Path(description="The file's id (file-…).", max_length=64)]


@router.post(
    "",
    response_model=FileRead,
    summary="Upload a training file",
    description=(
        "Multipart upload of a JSONL file with `purpose=fine-tune`. The body is validated while "
        "it streams to storage; a file with problems is still stored, with `status: error`, a "
        "readable `status_details` and every problem (line, field, reason) in `errors`. A valid "
        "file is then screened for harmful examples in the background (`safety_status`; "
        "GET /v1/files/{id}/safety_report); it is usable for training meanwhile."
    ),
    responses=responses(400, 401, 413, 429),
    openapi_extra={"requestBody": UPLOAD_REQUEST_BODY},
)
async def upload_file(
    request: Request,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
) -> FileRead:
    tenant_id = key.tenant_id
    declared = int(request.headers.get("content-length") or 0)
    await run_in_threadpool(lambda: upload_quota(session, settings, tenant_id, declared))
    # Give the connection used for authentication back to the pool: an upload can take minutes
    # and must not hold a database connection (or a transaction) while the bytes arrive.
    await run_in_threadpool(session.close)
    file_id = new_id("file")
    storage_key = file_key(file_id)
    upload = await run_with_body(
        request.stream(),
        lambda body: receive_into_store(
            body,
            content_type=request.headers.get("content-type"),
            store=store,
            key=storage_key,
            limits=DatasetLimits.from_settings(settings),
            max_file_bytes=settings.max_upload_bytes,
        ),
    )
    await run_in_threadpool(
        lambda: check_stored_upload(
            session=session,
            settings=settings,
            store=store,
            tenant_id=tenant_id,
            storage_key=storage_key,
            size=upload.size,
        )
    )
    row = await run_in_threadpool(
        lambda: service.record_upload(
            session=session,
            store=store,
            tenant_id=tenant_id,
            file_id=file_id,
            storage_key=storage_key,
            upload=upload,
            screen=queue.send_screen_file,
        )
    )
    return FileRead.from_row(row)


@router.get(
    "",
    response_model=FileList,
    summary="List files",
    description="Newest first by default. Pages hold at most the server's page limit (100).",
    responses=responses(400, 401),
)
def list_files(
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    after: Annotated[
        str | None, Query(description="Id of the last file of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[Literal["asc", "desc"], Query(description="By creation time.")] = "desc",
    purpose: Annotated[str | None, Query(pattern=r"^[a-z_-]{1,32}$")] = None,
) -> FileList:
    rows, has_more = service.list_files(
        session=session,
        tenant_id=key.tenant_id,
        after=after,
        limit=min(limit, settings.page_limit_max),
        order=order,
        purpose=purpose,
    )
    return FileList(**page_of([FileRead.from_row(r) for r in rows], has_more))


@router.get(
    "/{file_id}",
    response_model=FileRead,
    summary="Retrieve a file",
    responses=responses(401, 404),
)
def get_file(file_id: FileId, key: CurrentKey, session: SessionDep) -> FileRead:
    return FileRead.from_row(
        service.get_file(session=session, tenant_id=key.tenant_id, file_id=file_id)
    )


@router.delete(
    "/{file_id}",
    response_model=FileDeleted,
    summary="Delete a file",
    description="Refused (409) while an unfinished fine-tuning job uses the file.",
    responses=responses(401, 404, 409),
)
def delete_file(
    file_id: FileId, key: CurrentKey, session: SessionDep, store: StoreDep
) -> FileDeleted:
    row = service.delete_file(
        session=session, store=store, tenant_id=key.tenant_id, file_id=file_id
    )
    return FileDeleted(id=row.id, deleted=True)


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    summary="Download a file's content",
    responses={
        200: {
            "description": "The file's bytes, as uploaded.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        **responses(401, 404),
    },
)
def file_content(
    file_id: FileId, key: CurrentKey, session: SessionDep, store: StoreDep
) -> StreamingResponse:
    row = service.get_file(session=session, tenant_id=key.tenant_id, file_id=file_id)
    if not store.exists(row.storage_key):
        raise NotFound(f"The content of file {file_id} is no longer stored.", param="file_id")
    return StreamingResponse(
        store.read_stream(row.storage_key),
        media_type="application/octet-stream",
        headers={
            "content-length": str(row.bytes),
            "content-disposition": f'attachment; filename="{row.id}.jsonl"',
        },
    )


@router.get(
    "/{file_id}/safety_report",
    response_model=FileSafetyReport,
    summary="Retrieve a file's safety screening report",
    description=(
        "Every line of a training file is scored with the pre-aligned model's likelihood ratio "
        "(completion vs refusal); lines below the threshold are flagged. The report fields are "
        "null (and `flagged` empty) until screening has completed."
    ),
    responses=responses(401, 404),
)
def safety_report(file_id: FileId, key: CurrentKey, session: SessionDep) -> FileSafetyReport:
    return FileSafetyReport.from_row(
        service.get_file(session=session, tenant_id=key.tenant_id, file_id=file_id)
    )
