"""Provider-only requests."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")


class ModelRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The name users pass as `model`, e.g. smollm2-135m-instruct.")
    path: str = Field(
        min_length=1,
        max_length=1024,
        description="A Hugging Face model directory on the server (must hold config.json).",
    )

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, v: Any) -> Any:
        if not isinstance(v, str) or not MODEL_ID_RE.match(v) or v.startswith("ft:"):
            raise PydanticCustomError(
                "invalid_model_id",
                "id must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', '-', '/', start with "
                "a letter or digit, and not start with 'ft:'",
            )
        return v
