"""Overview ``/dashboard/``: the state of the whole service on one page."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.dashboard import queries
from api.dashboard.auth import Admin
from api.dashboard.render import render
from api.deps import SessionDep, SettingsDep
from core import workers
from core.jobs import JobStatus
from core.models import now

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def overview(
    request: Request, admin: Admin, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    by_kind = queries.jobs_by_status_and_kind(session)
    queued, oldest_queued = queries.queue_depth(session)
    backlog, oldest_backlog = queries.screening_backlog(session)
    ts = now()
    worker_stale_s = workers.stale_after_s(settings.heartbeat_interval_s)
    context = {
        "statuses": [s.value for s in JobStatus],
        "by_kind": by_kind,
        "queued": queued,
        "oldest_queued_age": None if oldest_queued is None else ts - oldest_queued,
        "running": queries.running_jobs(session, stale_after_s=settings.stale_after_s),
        "stale_after_s": settings.stale_after_s,
        "failures": queries.failures_by_code(session, since=ts - queries.DAY_S),
        "pending_alignments": queries.pending_alignments(session),
        "screening_backlog": backlog,
        "oldest_backlog_age": None if oldest_backlog is None else ts - oldest_backlog,
        "unreviewed": queries.unreviewed_flagged_lines(session),
        "workers_alive": queries.workers_alive(session, stale_after_s=worker_stale_s),
        "worker_stale_after_s": worker_stale_s,
        "now": ts,
    }
    return render(request, "overview.html", context, active="overview")
