"""Provider operations: register a local base model, align a base model, set model and tenant
policies, and read any tenant's job evidence."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.admin.schemas import (
    AlignmentCreate,
    ModelPolicyUpdate,
    ModelRegister,
    TenantPolicyUpdate,
)
from api.errors import BadRequest, Conflict, NotFound
from api.ids import is_model_name, is_object_id
from api.jobs.service import USABLE_MODEL_STATUSES
from api.pagination import cursor_seq, fetch_page
from core.alignments import ALIGNMENT_KIND, active_alignment, create_alignment_job
from core.config import Settings
from core.models import Job, Model, Tenant
from core.policy import aligned_model_id

log = logging.getLogger(__name__)

Enqueue = Callable[[str], None]
TENANT_NAME_MAX = 128


def _check_model_dir(raw: str) -> Path:
    path = Path(raw)
    if "\x00" in raw or not path.is_absolute():
        raise BadRequest(
            "path must be an absolute path on the server.", param="path", code="invalid_model_path"
        )
    try:
        path = path.resolve()
        found = (path / "config.json").is_file()
    except (OSError, ValueError):
        found = False
    config = path / "config.json"
    if not found:
        raise BadRequest(
            f"{path} is not a Hugging Face model directory: it has no config.json.",
            param="path",
            code="invalid_model_path",
        )
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(
            f"{config} is not readable JSON: {exc}", param="path", code="invalid_model_path"
        ) from exc
    if not isinstance(parsed, dict):
        raise BadRequest(f"{config} is not a JSON object.", param="path", code="invalid_model_path")
    return path


def register_model(*, session: Session, body: ModelRegister) -> Model:
    path = _check_model_dir(body.path)
    if session.scalar(select(Model.seq).where(Model.id == body.id)) is not None:
        raise Conflict(
            f"A model named {body.id!r} already exists.", param="id", code="model_exists"
        )
    row = Model(id=body.id, source="local", path=str(path), status="ready", owned_by="system")
    session.add(row)
    try:
        session.commit()
    except IntegrityError as exc:  # lost a race with an identical registration
        session.rollback()
        raise Conflict(
            f"A model named {body.id!r} already exists.", param="id", code="model_exists"
        ) from exc
    return row


def create_alignment(
    *, session: Session, settings: Settings, tenant_id: str, body: AlignmentCreate, enqueue: Enqueue
) -> tuple[Job, bool]:
    """Queue the stage-1 alignment of a base model; its aligned model is listed as ``pending``
    until the worker registers it. Inserted, committed, then enqueued (ids only). Returns the job
    and whether it was created: the same request while that alignment is unfinished returns it
    again; a different one is a conflict."""
    base = None
    if is_model_name(body.base):
        base = session.scalar(select(Model).where(Model.id == body.base))
    if base is None or base.status not in USABLE_MODEL_STATUSES:
        raise BadRequest(
            f"The model {body.base!r} does not exist or is not available.",
            param="base",
            code="model_not_found",
        )
    if base.kind != "base":
        raise BadRequest(
            f"The model {body.base!r} is an {base.kind} model; align a base model.",
            param="base",
            code="invalid_base_model",
        )
    target = aligned_model_id(base.id, body.method)
    taken = session.scalar(select(Model.kind).where(Model.id == target))
    if taken is not None and taken != "aligned":
        raise Conflict(
            f"A {taken} model named {target!r} already exists; the aligned model needs its name.",
            param="base",
            code="model_exists",
        )
    requested = body.hyperparameters.model_dump(exclude_none=True) if body.hyperparameters else {}
    active = active_alignment(session, base=base.id, method=body.method)
    if active is not None:
        if active.hyperparameters != requested:
            raise Conflict(
                f"{target} is already being aligned by job {active.id} with other "
                "hyperparameters; cancel it or wait for it to finish.",
                param="hyperparameters",
                code="alignment_in_progress",
            )
        session.rollback()
        return active, False
    try:
        job = create_alignment_job(
            session,
            base=base.id,
            method=body.method,
            hyperparameters=requested,
            tenant_id=tenant_id,
            settings=settings,
        )
        session.commit()
    except ValueError as exc:  # the shared helper's own checks; the schemas should catch these
        session.rollback()
        raise BadRequest(str(exc), param="hyperparameters", code="invalid_hyperparameter") from exc
    except IntegrityError as exc:  # lost a race with an identical request creating the model
        session.rollback()
        raise Conflict(
            f"{target} is already being aligned.", param="base", code="alignment_in_progress"
        ) from exc
    try:
        enqueue(job.id)
    except Exception:
        log.warning(
            "could not send alignment %s to the broker; the sweeper will re-send it",
            job.id,
            exc_info=True,
        )
    return job, True


def list_alignments(*, session: Session, after: str | None, limit: int) -> tuple[list[Job], bool]:
    """Every alignment job, whichever admin tenant started it; newest first."""
    scope = (Job.kind == ALIGNMENT_KIND,)
    after_seq = cursor_seq(session, Job.seq, Job.id, after, scope)
    return fetch_page(session, select(Job).where(*scope), Job.seq, after_seq=after_seq, limit=limit)


def get_alignment(*, session: Session, alignment_id: str) -> Job:
    row = None
    if is_object_id(alignment_id):
        row = session.scalar(select(Job).where(Job.id == alignment_id, Job.kind == ALIGNMENT_KIND))
    if row is None:
        raise NotFound(f"No such alignment job: {alignment_id}", param="alignment_id")
    return row


def list_models(*, session: Session) -> list[Model]:
    """Every model row, whatever its status; newest first."""
    return list(session.scalars(select(Model).order_by(Model.seq.desc())))


def _patched(current: dict[str, Any] | None, patch: dict[str, Any]) -> dict[str, Any]:
    """A PATCH of a policy: keys given replace, keys given as null are removed."""
    merged = dict(current or {})
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def get_model(*, session: Session, model_id: str) -> Model:
    row = (
        session.scalar(select(Model).where(Model.id == model_id))
        if is_model_name(model_id)
        else None
    )
    if row is None:
        raise NotFound(
            f"The model {model_id[:128]!r} does not exist.", param="model", code="model_not_found"
        )
    return row


def update_model_policy(*, session: Session, model_id: str, body: ModelPolicyUpdate) -> Model:
    row = None
    if is_model_name(model_id):
        row = session.scalar(select(Model).where(Model.id == model_id).with_for_update())
    if row is None:
        raise NotFound(
            f"The model {model_id[:128]!r} does not exist.", param="model", code="model_not_found"
        )
    policy = _patched(row.policy, body.policy.model_dump(exclude_unset=True))
    serve = policy.get("serve")
    if serve is not None and serve != (row.policy or {}).get("serve"):
        target = session.scalar(select(Model).where(Model.id == serve))
        if target is None or target.status == "error":
            raise BadRequest(
                f"policy.serve names {serve!r}, which is not a ready or pending model.",
                param="policy.serve",
                code="invalid_policy",
            )
    if policy.get("defense") == "sft" and not policy.get("allow_sft"):
        raise BadRequest(
            "policy.defense 'sft' trains without any defense; it needs allow_sft: true too.",
            param="policy.defense",
            code="invalid_policy",
        )
    row.policy = policy
    session.commit()
    return row


def list_tenants(*, session: Session, after: str | None, limit: int) -> tuple[list[Tenant], bool]:
    after_seq = cursor_seq(session, Tenant.seq, Tenant.id, after, ())
    return fetch_page(
        session, select(Tenant), Tenant.seq, after_seq=after_seq, limit=limit, descending=False
    )


def update_tenant_policy(*, session: Session, name: str, body: TenantPolicyUpdate) -> Tenant:
    row = None
    if len(name) <= TENANT_NAME_MAX and "\x00" not in name:
        row = session.scalar(select(Tenant).where(Tenant.name == name).with_for_update())
    if row is None:
        raise NotFound(f"No such tenant: {name[:128]!r}", param="tenant_name")
    row.policy = _patched(row.policy, body.policy.model_dump(exclude_unset=True))
    session.commit()
    return row
