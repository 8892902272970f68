"""Models ``/dashboard/models``: base and aligned models in lineage order, with the status and
progress of a pending alignment, safety scores and policy; a policy form per model, a form that
registers a local base model and one that queues an alignment (the same service functions and
validation as /admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from api.admin import service
from api.admin.schemas import ALIGNMENT_RANGES, AlignmentCreate, ModelPolicyUpdate, ModelRegister
from api.dashboard import audited, console_queries
from api.dashboard.auth import Admin, AdminAction, DashboardError
from api.dashboard.render import render
from api.deps import QueueDep, SessionDep, SettingsDep
from api.errors import ApiError
from core.policy import ALIGNMENT_METHODS, USER_DEFENSES

router = APIRouter()

# The alignment knobs the form offers (the rest keep the server's settings).
FORM_KNOBS = ("steps", "batch_size", "learning_rate", "samples", "seed")


def _invalid(error: ValidationError) -> DashboardError:
    return DashboardError(400, str(error.errors()[0].get("msg", "Invalid value.")))


@router.get("/models", response_class=HTMLResponse)
def models(request: Request, admin: Admin, session: SessionDep) -> HTMLResponse:
    rows = console_queries.model_rows(session)
    context = {
        "rows": rows,
        "bases": [r.model.id for r in rows if r.model.kind == "base" and r.model.status == "ready"],
        "methods": ALIGNMENT_METHODS,
        "defenses": USER_DEFENSES,
        "knobs": [(k, ALIGNMENT_RANGES[k]) for k in FORM_KNOBS],
    }
    return render(request, "models.html", context, active="models")


def _number(name: str, raw: str) -> float | int | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise DashboardError(400, f"{name} must be a number; got {raw[:32]!r}") from None
    return int(value) if value.is_integer() and name != "learning_rate" else value


@router.post("/models/policy")
def set_policy(
    admin: AdminAction,
    session: SessionDep,
    model_id: Annotated[str, Form(max_length=256)],
    serve: Annotated[str, Form(max_length=128)] = "",
    defense: Annotated[str, Form(max_length=32)] = "",
    allow_sft: Annotated[str, Form(max_length=8)] = "",
    tau: Annotated[str, Form(max_length=32)] = "",
) -> Response:
    """Each field left empty removes that key (the server's setting applies again)."""
    policy: dict[str, Any] = {
        "serve": serve.strip() or None,
        "defense": defense or None,
        "allow_sft": True if allow_sft == "yes" else None,
        "tau": _number("tau", tau),
    }
    try:
        body = ModelPolicyUpdate.model_validate({"policy": policy})
        row = service.update_model_policy(session=session, model_id=model_id, body=body)
    except ValidationError as error:
        raise _invalid(error) from error
    except ApiError as error:
        raise DashboardError(error.status_code, error.message) from error
    audited.record(
        session,
        admin,
        "model.policy",
        target_type="model",
        target_id=row.id,
        detail={"patch": policy, "policy": row.policy},
    )
    return RedirectResponse("/dashboard/models", status_code=303)


@router.post("/models/align")
async def align(
    request: Request,
    admin: AdminAction,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
) -> Response:
    form = await request.form()
    hyper = {
        k: _number(k, str(form.get(k, ""))) for k in FORM_KNOBS if str(form.get(k, "")).strip()
    }
    raw = {"base": str(form.get("base", "")), "method": str(form.get("method", ""))}
    try:
        body = AlignmentCreate.model_validate({**raw, "hyperparameters": hyper or None})
        job, created = service.create_alignment(
            session=session,
            settings=settings,
            tenant_id=admin.tenant_id,
            body=body,
            enqueue=queue.send_run_job,
        )
    except ValidationError as error:
        raise _invalid(error) from error
    except ApiError as error:
        raise DashboardError(error.status_code, error.message) from error
    if created:
        audited.record(
            session,
            admin,
            "alignment.create",
            target_type="job",
            target_id=job.id,
            detail={"request": body.model_dump(exclude_unset=True), "model": job.served_model},
        )
    return RedirectResponse(f"/dashboard/jobs/{job.id}", status_code=303)


@router.post("/models/register")
def register(
    admin: AdminAction,
    session: SessionDep,
    model_id: Annotated[str, Form(max_length=256)],
    path: Annotated[str, Form(max_length=1024)],
) -> Response:
    try:
        body = ModelRegister.model_validate({"id": model_id.strip(), "path": path.strip()})
        row = service.register_model(session=session, body=body)
    except ValidationError as error:
        raise _invalid(error) from error
    except ApiError as error:
        raise DashboardError(error.status_code, error.message) from error
    audited.record(
        session, admin, "model.register", target_type="model", target_id=row.id,
        detail={"path": row.path},
    )  # fmt: skip
    return RedirectResponse("/dashboard/models", status_code=303)
