"""Workers ``/dashboard/workers``: the registry the workers keep themselves (core.workers):
host, pid, queues, device, memory, current job, last seen, alive / stale / stopped."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.admin import console_service
from api.dashboard.auth import Admin
from api.dashboard.render import render
from api.deps import SessionDep, SettingsDep
from core import workers

router = APIRouter()


@router.get("/workers", response_class=HTMLResponse)
def worker_list(
    request: Request, admin: Admin, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    rows = console_service.list_workers(session, heartbeat_interval_s=settings.heartbeat_interval_s)
    context = {
        "rows": rows,
        "stale_after_s": workers.stale_after_s(settings.heartbeat_interval_s),
        "stopped_shown_s": console_service.STOPPED_SHOWN_S,
    }
    return render(request, "workers.html", context, active="workers")
