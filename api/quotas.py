"""Quota and rate-limit answers: 429 (or 400 for a job too large to ever fit) in OpenAI's
error envelope, with ``Retry-After`` and a message that names the limit and its value.

The openai SDK retries a 429 after ``Retry-After`` (when at most 60 s) up to ``max_retries``
times. A limit that waiting cannot lift (stored files and bytes, the month's tokens) is sent
with ``x-should-retry: false`` so the SDK raises at once instead of retrying in vain.
"""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from api.errors import NO_RETRY, error_response
from core.config import Settings
from core.quotas import QuotaExceeded, check_upload, tenant_limits
from core.storage import ArtifactStore


def quota_response(exc: QuotaExceeded) -> JSONResponse:
    headers: dict[str, str] = {}
    if exc.status == 429:
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
    if not exc.retryable:
        headers.update(NO_RETRY)
    return error_response(
        exc.status,
        exc.message,
        type="insufficient_quota" if exc.status == 429 else "invalid_request_error",
        param=exc.param,
        code=exc.limit,
        headers=headers,
    )


def install_quota_handler(app: FastAPI) -> None:
    async def on_quota(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, QuotaExceeded)
        return quota_response(exc)

    app.add_exception_handler(QuotaExceeded, on_quota)


def check_stored_upload(
    *,
    session: Session,
    settings: Settings,
    store: ArtifactStore,
    tenant_id: str,
    storage_key: str,
    size: int,
) -> None:
    """After an upload is stored: over the files or bytes quota, its bytes are removed and the
    request answered 429. (Checked once more before the body is read, to fail fast.)"""
    try:
        limits = tenant_limits(session, tenant_id, settings=settings)
        check_upload(session, tenant_id=tenant_id, limits=limits, incoming_bytes=size)
    except BaseException:
        store.delete(storage_key)
        raise
    finally:
        session.rollback()


def upload_quota(session: Session, settings: Settings, tenant_id: str, declared: int) -> None:
    """Before the body is read: refuse an upload that cannot fit whatever its size (the file
    count, or the bytes, already at the limit). The request's Content-Length counts the
    multipart envelope too, so the exact check waits for the stored size."""
    limits = tenant_limits(session, tenant_id, settings=settings)
    check_upload(session, tenant_id=tenant_id, limits=limits, incoming_bytes=1 if declared else 0)
