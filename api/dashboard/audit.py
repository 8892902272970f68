"""Audit ``/dashboard/audit``: every admin action (dashboard or /admin), newest first, paged by
cursor like GET /admin/audit, optionally one action or one target."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from api.admin import console_service
from api.dashboard.auth import Admin
from api.dashboard.render import render
from api.deps import SessionDep
from api.errors import ApiError
from core.models import AdminAction

router = APIRouter()
PER_PAGE = 50


@router.get("/audit", response_class=HTMLResponse)
def audit_log(
    request: Request,
    admin: Admin,
    session: SessionDep,
    after: Annotated[str, Query(max_length=64)] = "",
    action: Annotated[str, Query(max_length=64)] = "",
    target_id: Annotated[str, Query(max_length=256)] = "",
) -> HTMLResponse:
    try:
        rows, more = console_service.list_actions(
            session,
            after=after or None,
            limit=PER_PAGE,
            action=action or None,
            target_id=target_id or None,
        )
    except ApiError:  # an unknown cursor: start from the newest
        rows, more = console_service.list_actions(
            session, after=None, limit=PER_PAGE, action=action or None, target_id=target_id or None
        )
    actions = sorted(a for a in session.scalars(select(AdminAction.action).distinct()) if a)
    query = {k: v for k, v in {"action": action, "target_id": target_id}.items() if v}
    context = {
        "rows": rows,
        "more": more,
        "actions": actions,
        "action": action,
        "target_id": target_id,
        "query": query,
        "next_after": rows[-1].id if rows and more else None,
    }
    return render(request, "audit.html", context, active="audit")
