"""Files: record an upload, list, fetch, delete. Every query is scoped by the caller's tenant."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from api.errors import BadRequest, Conflict, NotFound
from api.files.schemas import PURPOSE
from api.files.upload import FILE_FIELD, ReceivedUpload
from api.ids import is_object_id
from api.pagination import cursor_seq, fetch_page
from core.jobs import CANCELLABLE
from core.models import File, Job, now
from core.screening import ScreeningStatus
from core.storage import ArtifactStore

log = logging.getLogger(__name__)

EXPIRES_MIN_S = 3600
EXPIRES_MAX_S = 30 * 24 * 3600
_KNOWN_FIELDS = {"purpose", "expires_after[anchor]", "expires_after[seconds]"}


def visible(tenant_id: str) -> tuple[ColumnElement[bool], ...]:
    """The caller's files that are neither deleted nor expired."""
    return (
        File.tenant_id == tenant_id,
        File.deleted_at.is_(None),
        or_(File.expires_at.is_(None), File.expires_at > now()),
    )


def _expires_at(fields: dict[str, str], created_at: int) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise BadRequest(
            "expires_after[anchor] must be 'created_at'.", param="expires_after.anchor"
        )
    try:
        value = int(seconds or "")
    except ValueError:
        value = -1
    if not EXPIRES_MIN_S <= value <= EXPIRES_MAX_S:
        raise BadRequest(
            f"expires_after[seconds] must be an integer from {EXPIRES_MIN_S} to {EXPIRES_MAX_S}.",
            param="expires_after.seconds",
        )
    return created_at + value


def _check_fields(upload: ReceivedUpload) -> None:
    for name in upload.fields:
        if name not in _KNOWN_FIELDS:
            raise BadRequest(
                f"Unrecognized request argument supplied: {name}",
                param=name,
                code="unknown_parameter",
            )
    if not upload.has_file:
        raise BadRequest(
            "A 'file' part is required.", param=FILE_FIELD, code="missing_required_parameter"
        )
    purpose = upload.fields.get("purpose")
    if purpose is None:
        raise BadRequest(
            "A 'purpose' field is required.", param="purpose", code="missing_required_parameter"
        )
    if purpose != PURPOSE:
        raise BadRequest(
            f"Unsupported purpose {purpose!r}: this service accepts purpose '{PURPOSE}' only.",
            param="purpose",
        )


def record_upload(
    *,
    session: Session,
    store: ArtifactStore,
    tenant_id: str,
    file_id: str,
    storage_key: str,
    upload: ReceivedUpload,
    screen: Callable[[str], None],
) -> File:
    """Insert the row for a stored upload. A file with problems is kept (status ``error``) so the
    user can see every problem; the stored bytes are removed if the request itself is invalid.
    A valid training file is queued for safety screening (after the commit, by id)."""
    try:
        _check_fields(upload)
        created_at = now()
        report = upload.report
        row = File(
            id=file_id,
            tenant_id=tenant_id,
            filename=upload.filename or "upload.jsonl",
            purpose=PURPOSE,
            bytes=upload.size,
            sha256=upload.sha256,
            storage_key=storage_key,
            status="processed" if report.ok else "error",
            status_details=None if report.ok else report.summary(),
            line_errors=[e.as_dict() for e in report.errors],
            n_examples=report.n_examples,
            n_errors=report.n_errors,
            data_format=report.format,
            safety_status=ScreeningStatus.QUEUED if report.ok else None,
            created_at=created_at,
            expires_at=_expires_at(upload.fields, created_at),
        )
        session.add(row)
        session.commit()
    except BaseException:
        store.delete(storage_key)
        raise
    if row.safety_status == ScreeningStatus.QUEUED:
        # The file is usable whatever happens to its screening, so a broker failure does not
        # fail the upload: the row stays queued for a later re-send.
        try:
            screen(row.id)
        except Exception:
            log.warning(
                "could not send file %s to screening; it stays queued", row.id, exc_info=True
            )
    return row


def get_file(*, session: Session, tenant_id: str, file_id: str) -> File:
    row = None
    if is_object_id(file_id):
        row = session.scalar(select(File).where(File.id == file_id, *visible(tenant_id)))
    if row is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return row


def list_files(
    *,
    session: Session,
    tenant_id: str,
    after: str | None,
    limit: int,
    order: str,
    purpose: str | None,
) -> tuple[list[File], bool]:
    # The cursor may name a file deleted since the previous page: look it up among all of the
    # tenant's files, not only the visible ones.
    after_seq = cursor_seq(session, File.seq, File.id, after, (File.tenant_id == tenant_id,))
    query = select(File).where(*visible(tenant_id))
    if purpose is not None:
        query = query.where(File.purpose == purpose)
    return fetch_page(
        session, query, File.seq, after_seq=after_seq, limit=limit, descending=order == "desc"
    )


def delete_file(*, session: Session, store: ArtifactStore, tenant_id: str, file_id: str) -> File:
    row = None
    if is_object_id(file_id):
        row = session.scalar(
            select(File).where(File.id == file_id, *visible(tenant_id)).with_for_update()
        )
    if row is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    user: Any = session.scalar(
        select(Job.id)
        .where(
            Job.tenant_id == tenant_id,
            or_(Job.training_file == file_id, Job.validation_file == file_id),
            Job.status.in_(CANCELLABLE),
        )
        .limit(1)
    )
    if user is not None:
        raise Conflict(
            f"File {file_id} is used by fine-tuning job {user}, which has not finished; "
            "cancel the job or wait for it to finish first.",
            param="file_id",
            code="file_in_use",
        )
    row.deleted_at = now()
    session.commit()
    store.delete(row.storage_key)
    return row
