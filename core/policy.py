"""Provider policy: which model a user job trains, which defense it runs, and the release gate.

Shared by the API (to show the defense on a new job) and the worker (to run it); see
docs/defended-jobs.md. Settings give the provider-wide defaults; a model's ``policy`` and a
tenant's ``policy`` override them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import Settings
from core.models import Model, Tenant

USER_DEFENSES = ("antibody", "lisa", "sft")
ALIGNMENT_METHODS = ("antibody", "booster", "vaccine", "sft")


def aligned_model_id(base: str, method: str) -> str:
    return f"{base}-{method}"


@dataclass(frozen=True)
class ServedModel:
    """The model a job trains. ``waiting_for`` names a pending aligned model to wait for."""

    model_id: str
    waiting_for: str | None = None


def resolve_served_model(session: Session, *, model_id: str, settings: Settings) -> ServedModel:
    named = session.scalar(select(Model).where(Model.id == model_id))
    if named is None:
        return ServedModel(model_id)
    serve = (named.policy or {}).get("serve")
    if serve:
        target = session.scalar(select(Model).where(Model.id == serve))
        if target is not None and target.status != "ready":
            return ServedModel(serve, waiting_for=serve)
        return ServedModel(serve)
    if named.kind == "aligned" or not settings.serve_aligned:
        return ServedModel(model_id)
    aligned = list(
        session.scalars(
            select(Model)
            .where(
                Model.kind == "aligned",
                Model.base_model == model_id,
                Model.method == settings.alignment_method,
            )
            .order_by(Model.seq.desc())
        )
    )
    ready = [m for m in aligned if m.status == "ready"]
    if ready:
        return ServedModel(ready[0].id)
    pending = [m for m in aligned if m.status == "pending"]
    if pending:
        return ServedModel(pending[0].id, waiting_for=pending[0].id)
    return ServedModel(model_id)


@dataclass(frozen=True)
class Defense:
    method: str
    params: dict[str, Any] = field(default_factory=dict)


def resolve_defense(model: Model | None, *, settings: Settings) -> Defense:
    """The defense a user job on ``model`` runs. The user has no say: it is provider policy."""
    policy = (model.policy if model is not None else None) or {}
    method = str(policy.get("defense") or settings.defense)
    if method not in USER_DEFENSES:
        method = "antibody"
    if method == "sft" and not policy.get("allow_sft"):
        method = "antibody"
    params: dict[str, Any] = {}
    if method == "antibody":
        params["tau"] = float(policy.get("tau", settings.antibody_tau))
    return Defense(method, params)


def gate_margin(tenant: Tenant | None, *, settings: Settings) -> float:
    policy = (tenant.policy if tenant is not None else None) or {}
    return float(policy.get("safety_gate_margin", settings.safety_gate_margin))


def gate_decision(*, harmful_score: float, start_harmful_score: float, margin: float) -> str | None:
    """``None`` when deployable, else the message that says which score crossed which threshold."""
    threshold = start_harmful_score + margin
    if harmful_score <= threshold + 1e-9:
        return None
    return (
        f"harmful_score {harmful_score:.3f} exceeds the release threshold {threshold:.3f} "
        f"(starting model {start_harmful_score:.3f} + margin {margin:.3f})"
    )
