"""Provider operations: register a local base model."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.admin.schemas import ModelRegister
from api.errors import BadRequest, Conflict
from core.models import Model


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
