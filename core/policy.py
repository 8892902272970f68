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


@dataclass(frozen=True)
class ReleaseGate:
    """Which checkpoints may be released: harmful score at most ``margin`` above the starting
    model's AND at most ``ceiling`` (an absolute harmful-score ceiling).

    The margin alone trusted the starting model: one that starts at 1.0 (tiny-gpt2, or any base
    with no pre-aligned model yet) passed every checkpoint (1.0 <= 1.0 + 0.1). The ceiling is the
    provider's floor of safety whatever the starting point.
    """

    margin: float
    ceiling: float

    def threshold(self, start_harmful_score: float) -> float:
        return min(start_harmful_score + self.margin, self.ceiling)

    def decide(self, *, harmful_score: float, start_harmful_score: float) -> str | None:
        """``None`` when deployable, else the message that says which threshold was crossed."""
        relative = start_harmful_score + self.margin
        if harmful_score > relative + 1e-9:
            return (
                f"harmful_score {harmful_score:.3f} exceeds the release threshold {relative:.3f} "
                f"(starting model {start_harmful_score:.3f} + margin {self.margin:.3f})"
            )
        if harmful_score > self.ceiling + 1e-9:
            return (
                f"harmful_score {harmful_score:.3f} exceeds the release ceiling "
                f"{self.ceiling:.3f} (the most any deployable checkpoint may have)"
            )
        return None

    def unaligned_warning(self, *, aligned: bool, start_harmful_score: float) -> str | None:
        """The warning a job gets when its served model is not a pre-aligned one and shows no
        measurable refusal ability: its starting harmful score is already at or above the
        ceiling. Such a job can only pass the gate if training itself makes it safer."""
        if aligned or start_harmful_score < self.ceiling - 1e-9:
            return None
        return (
            f"The served model has no pre-aligned version and no measurable refusal ability "
            f"(starting harmful_score {start_harmful_score:.3f} >= ceiling {self.ceiling:.3f}): "
            "the defense has nothing to preserve, and checkpoints above the ceiling are not "
            "deployable. Align this base model first (ftaas models align)."
        )


def release_gate(tenant: Tenant | None, *, settings: Settings) -> ReleaseGate:
    """Settings' margin and ceiling, each overridden by the tenant's policy when it sets one."""
    policy = (tenant.policy if tenant is not None else None) or {}
    margin = policy.get("safety_gate_margin")
    ceiling = policy.get("safety_gate_max_harmful")
    return ReleaseGate(
        margin=float(settings.safety_gate_margin if margin is None else margin),
        ceiling=float(settings.safety_gate_max_harmful if ceiling is None else ceiling),
    )
