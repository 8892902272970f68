"""Models a caller can see: every usable base and pre-aligned model, plus the fine-tuned models
of its tenant."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import NotFound
from api.ids import is_model_name
from api.models.schemas import ModelRead
from core.jobs import JobStatus
from core.models import Job, Model

VISIBLE_BASE_STATUSES = ("ready", "pending")


def model_read(row: Model) -> ModelRead:
    """A base or pre-aligned model as a caller sees it."""
    return ModelRead(
        id=row.id,
        created=row.created_at,
        owned_by=row.owned_by,
        status=row.status,
        kind="aligned" if row.kind == "aligned" else "base",
        base_model=row.base_model,
        method=row.method,
        lineage=row.lineage or {},
        safety=row.safety,
    )


def _fine_tuned(row: Job) -> ModelRead:
    assert row.fine_tuned_model is not None
    return ModelRead(
        id=row.fine_tuned_model,
        created=row.finished_at or row.created_at,
        owned_by=row.tenant_id,
        status="ready",
        kind="fine-tuned",
    )


def list_models(*, session: Session, tenant_id: str) -> list[ModelRead]:
    """Newest first."""
    base = session.scalars(select(Model).where(Model.status.in_(VISIBLE_BASE_STATUSES)))
    tuned = session.scalars(
        select(Job).where(
            Job.tenant_id == tenant_id,
            Job.status == JobStatus.SUCCEEDED,
            Job.fine_tuned_model.is_not(None),
        )
    )
    models = [model_read(m) for m in base] + [_fine_tuned(j) for j in tuned]
    return sorted(models, key=lambda m: (m.created, m.id), reverse=True)


def get_model(*, session: Session, tenant_id: str, model_id: str) -> ModelRead:
    if not is_model_name(model_id):
        raise NotFound(
            f"The model {model_id[:64]!r} does not exist.", param="model", code="model_not_found"
        )
    base = session.scalar(
        select(Model).where(Model.id == model_id, Model.status.in_(VISIBLE_BASE_STATUSES))
    )
    if base is not None:
        return model_read(base)
    tuned = session.scalar(
        select(Job)
        .where(
            Job.tenant_id == tenant_id,
            Job.status == JobStatus.SUCCEEDED,
            Job.fine_tuned_model == model_id,
        )
        .limit(1)
    )
    if tuned is None:
        raise NotFound(
            f"The model {model_id!r} does not exist.", param="model", code="model_not_found"
        )
    return _fine_tuned(tuned)
