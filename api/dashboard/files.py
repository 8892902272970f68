"""Files ``/dashboard/files``: every tenant's uploads with their validation errors and upload
screening reports, filtered by tenant and status; one file's page lists its flagged lines and
the jobs that trained on it. Read-only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from api.dashboard import console_queries
from api.dashboard.auth import Admin, DashboardError
from api.dashboard.render import render
from api.deps import SessionDep
from core.models import File, Tenant

router = APIRouter()
PER_PAGE = 50


@router.get("/files", response_class=HTMLResponse)
def files(
    request: Request,
    admin: Admin,
    session: SessionDep,
    tenant: Annotated[str, Query(max_length=128)] = "",
    status: Annotated[str, Query(max_length=16)] = "",
    safety_status: Annotated[str, Query(max_length=16)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    filters = console_queries.FileFilters(tenant=tenant, status=status, safety_status=safety_status)
    rows, more = console_queries.file_rows(session, filters, page=page, per_page=PER_PAGE)
    context = {
        "rows": rows,
        "filters": filters,
        "query": filters.query_string(),
        "choices": console_queries.file_choices(session),
        "page": page,
        "more": more,
    }
    return render(request, "files.html", context, active="files")


@router.get("/files/{file_id}", response_class=HTMLResponse)
def file_page(
    request: Request,
    admin: Admin,
    session: SessionDep,
    file_id: Annotated[str, Path(max_length=64)],
) -> HTMLResponse:
    found = session.execute(
        select(File, Tenant.name)
        .join(Tenant, Tenant.id == File.tenant_id)
        .where(File.id == file_id)
    ).first()
    if found is None:
        raise DashboardError(404, f"No such file: {file_id}")
    row, tenant = found
    report = row.safety_report or {}
    context = {
        "file": row,
        "tenant": tenant,
        "report": report,
        "flagged": (report.get("flagged") or [])[:500],
        "jobs": console_queries.jobs_using_file(session, row.id),
    }
    return render(request, "file.html", context, active="files")
