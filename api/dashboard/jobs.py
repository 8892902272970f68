"""Jobs ``/dashboard/jobs``: every tenant's jobs, filtered and paginated; one job's page with
its charts, checkpoints, events (refreshed every few seconds while it runs) and flagged lines;
and cancel / pause / resume of any job through the same transitions as ``/v1``.

An action is a GET that shows a confirmation page (works without JavaScript) and a POST that
does it, then redirects back to the job.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.dashboard import audited, job_view, queries
from api.dashboard.auth import Admin, AdminAction, DashboardError
from api.dashboard.render import render
from api.deps import QueueDep, SessionDep, StoreDep
from api.errors import ApiError
from api.jobs import service
from core.models import Job

router = APIRouter()

PER_PAGE = 50
JobId = Annotated[str, Path(max_length=64)]
Action = Literal["cancel", "pause", "resume"]
QUESTIONS = {
    "cancel": "Cancel job {id}? A running job stops at its next heartbeat; this cannot be undone.",
    "pause": "Pause job {id}? It stops at its next checkpoint and can be resumed.",
    "resume": "Resume job {id}? It is queued again and continues from its last checkpoint.",
}


def _job(session: Session, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id))
    if job is None:
        raise DashboardError(404, f"No such job: {job_id}")
    return job


@router.get("/jobs", response_class=HTMLResponse)
def jobs(
    request: Request,
    admin: Admin,
    session: SessionDep,
    status: Annotated[str, Query(max_length=32)] = "",
    tenant: Annotated[str, Query(max_length=128)] = "",
    model: Annotated[str, Query(max_length=128)] = "",
    defense: Annotated[str, Query(max_length=32)] = "",
    error_code: Annotated[str, Query(max_length=64)] = "",
    kind: Annotated[str, Query(max_length=16)] = "",
    job: Annotated[str, Query(max_length=64)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    filters = queries.JobFilters(
        status=status,
        tenant=tenant,
        model=model,
        defense=defense,
        error_code=error_code,
        kind=kind,
        job=job.strip(),
    )
    rows, more = queries.job_rows(session, filters, page=page, per_page=PER_PAGE)
    context = {
        "rows": rows,
        "filters": filters,
        "query": filters.query_string(),
        "choices": queries.filter_choices(session),
        "page": page,
        "more": more,
    }
    return render(request, "jobs.html", context, active="jobs")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request, admin: Admin, session: SessionDep, store: StoreDep, job_id: JobId
) -> HTMLResponse:
    job = _job(session, job_id)
    context = {**job_view.context(session, store, job), "version": job_view.version(session, job)}
    return render(request, "job.html", context, active="jobs")


@router.get("/jobs/{job_id}/live", response_class=HTMLResponse)
def job_live(
    request: Request,
    admin: Admin,
    session: SessionDep,
    store: StoreDep,
    job_id: JobId,
    since: Annotated[str, Query(max_length=128)] = "",
) -> Response:
    """The part of the job page that changes while it runs (htmx swaps it every few seconds;
    once the job is terminal the fragment comes back without its trigger, so polling stops)."""
    job = _job(session, job_id)
    version = job_view.version(session, job)
    if since and since == version:
        # Nothing new since the page's copy: htmx swaps nothing on a 204 and keeps polling.
        return Response(status_code=204)
    context = job_view.context(session, store, job, with_flagged=False)
    return render(request, "_job_live.html", {**context, "version": version})


@router.get("/jobs/{job_id}/{action}", response_class=HTMLResponse)
def confirm_action(
    request: Request, admin: Admin, session: SessionDep, job_id: JobId, action: Action
) -> HTMLResponse:
    job = _job(session, job_id)
    context = {
        "title": f"{action.capitalize()} job",
        "question": QUESTIONS[action].format(id=job.id) + f" It is {job.status} now.",
        "action": f"/dashboard/jobs/{job.id}/{action}",
        "button": f"{action.capitalize()} job",
        "back": f"/dashboard/jobs/{job.id}",
    }
    return render(request, "confirm.html", context, active="jobs")


@router.post("/jobs/{job_id}/{action}")
def do_action(
    admin: AdminAction, session: SessionDep, queue: QueueDep, job_id: JobId, action: Action
) -> Response:
    try:
        if action == "cancel":
            service.cancel_job(session=session, tenant_id=None, job_id=job_id)
        elif action == "pause":
            service.pause_job(session=session, tenant_id=None, job_id=job_id)
        else:
            service.resume_job(
                session=session, tenant_id=None, job_id=job_id, enqueue=queue.send_run_job
            )
    except ApiError as error:
        raise DashboardError(error.status_code, error.message) from error
    audited.record(session, admin, f"job.{action}", target_type="job", target_id=job_id)
    return RedirectResponse(f"/dashboard/jobs/{job_id}", status_code=303)
