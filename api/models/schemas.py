"""Model objects: the provider's base models and the caller's fine-tuned models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelRead(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Extensions.
    status: Literal["pending", "ready", "error"] = Field(
        description="pending: registered but still being prepared; ready: usable."
    )
    kind: Literal["base", "fine-tuned"]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelRead]
