"""Model objects: the provider's base and pre-aligned models and the caller's fine-tuned models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ModelRead(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Extensions.
    status: Literal["pending", "ready", "error"] = Field(
        description="pending: registered but still being prepared (or aligned); ready: usable."
    )
    kind: Literal["base", "aligned", "fine-tuned"] = Field(
        description="base: a provider base model; aligned: a base model plus the provider's "
        "safety-alignment adapter (user jobs on the base train it); fine-tuned: this tenant's."
    )
    base_model: str | None = Field(None, description="For an aligned model: the base it aligns.")
    method: str | None = Field(
        None, description="For an aligned model: its alignment method (antibody, booster, …)."
    )
    lineage: dict[str, Any] | None = Field(
        None,
        description="How the model was made (base, method, hyperparameters, data, seed); null "
        "for fine-tuned models.",
    )
    safety: dict[str, Any] | None = Field(
        None,
        description="Safety scores before any user fine-tuning (harmful_score, over_refusal, "
        "…); null until evaluated.",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelRead]
