"""Review ``/dashboard/review``: the flagged lines of every job, most down-weighted first, each
with its upload-screening score; an admin marks each harmful or benign, and the page shows the
precision of flagging those decisions measure (harmful / decided)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.dashboard import audited, job_view
from api.dashboard.auth import Admin, AdminAction, DashboardError
from api.dashboard.lines import read_lines
from api.dashboard.render import render
from api.deps import SessionDep, StoreDep
from core import reviews
from core.models import File, Job, Tenant
from core.storage import ArtifactStore

router = APIRouter()

PER_PAGE = 25


def all_flagged(session: Session) -> list[dict[str, Any]]:
    """Every flagged line of every job, most down-weighted (lowest relative weight) first."""
    rows = session.execute(
        select(Job.id, Tenant.name, Job.training_file, Job.flagged_lines)
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where(Job.flagged_lines.is_not(None))
    )
    items = []
    for job_id, tenant, training_file, flagged in rows:
        for item in flagged or []:
            if isinstance(item, dict) and isinstance(item.get("line"), int):
                items.append(
                    {**item, "job_id": job_id, "tenant": tenant, "training_file": training_file}
                )
    items.sort(key=lambda i: (float(i.get("relative_weight") or 0.0), i["job_id"], i["line"]))
    return items


def with_details(session: Session, store: ArtifactStore, items: list[dict[str, Any]]) -> None:
    """Adds each item's text, upload-screening score and decision (one file read per file)."""
    decided = reviews.decisions_for(session, [(i["job_id"], i["line"]) for i in items])
    file_ids = sorted({i["training_file"] for i in items})
    files = (
        {f.id: f for f in session.scalars(select(File).where(File.id.in_(file_ids)))}
        if file_ids
        else {}
    )
    for file_id in file_ids:
        file = files.get(file_id)
        mine = [i for i in items if i["training_file"] == file_id]
        scores = job_view.screening_scores(file.safety_report if file else None)
        texts = read_lines(store, file.storage_key, [i["line"] for i in mine]) if file else {}
        for i in mine:
            i["text"] = texts.get(i["line"])
            i["screening_score"] = scores.get(i["line"])
    for i in items:
        i["decision"] = decided.get((i["job_id"], i["line"]))


@router.get("/review", response_class=HTMLResponse)
def review(
    request: Request,
    admin: Admin,
    session: SessionDep,
    store: StoreDep,
    show: Annotated[str, Query(pattern="^(undecided|all)$")] = "undecided",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    items = all_flagged(session)
    decided = reviews.decisions_for(session, [(i["job_id"], i["line"]) for i in items])
    if show == "undecided":
        items = [i for i in items if (i["job_id"], i["line"]) not in decided]
    total = len(items)
    shown = items[(page - 1) * PER_PAGE : page * PER_PAGE]
    with_details(session, store, shown)
    precision = reviews.precision(session)
    context = {
        "flagged": shown,
        "show_job": True,
        "show": show,
        "page": page,
        "more": page * PER_PAGE < total,
        "total": total,
        "precision": precision,
        "back": f"/dashboard/review?show={show}&page={page}",
    }
    return render(request, "review.html", context, active="review")


@router.get("/review/precision", response_class=HTMLResponse)
def precision_card(request: Request, admin: Admin, session: SessionDep) -> HTMLResponse:
    return render(request, "_precision.html", {"precision": reviews.precision(session)})


@router.post("/review/decide")
def decide(
    request: Request,
    admin: AdminAction,
    session: SessionDep,
    store: StoreDep,
    job_id: Annotated[str, Form(max_length=64)],
    line: Annotated[int, Form(ge=1)],
    decision: Annotated[reviews.Decision, Form()],
    show_job: Annotated[int, Form()] = 1,
    back: Annotated[str, Form(max_length=512)] = "/dashboard/review",
) -> Response:
    job = session.scalar(select(Job).where(Job.id == job_id))
    if job is None:
        raise DashboardError(404, f"No such job: {job_id}")
    flagged = job_view.flagged(session, store, job, texts=False)
    if not any(int(i["line"]) == line for i in flagged):
        raise DashboardError(400, f"Line {line} is not a flagged line of job {job_id}.")
    reviews.decide(
        session, job_id=job_id, line=line, decision=decision, api_key_id=admin.api_key_id
    )
    audited.record(
        session,
        admin,
        "line.review",
        target_type="job",
        target_id=job_id,
        detail={"line": line, "decision": str(decision)},
    )
    if request.headers.get("hx-request"):
        item = next(i for i in job_view.flagged(session, store, job) if int(i["line"]) == line)
        tenant = session.scalar(select(Tenant.name).where(Tenant.id == job.tenant_id))
        context = {"item": {**item, "tenant": tenant}, "show_job": bool(show_job), "back": back}
        response = render(request, "_flagged_row.html", context)
        response.headers["HX-Trigger"] = "decided"  # the precision card refreshes itself
        return response
    # Only ever back to a dashboard page (never an open redirect).
    target = back if back.startswith("/dashboard/") and "//" not in back else "/dashboard/review"
    return RedirectResponse(target, status_code=303)
