"""Resolve a job's ``model`` name to a prepared model directory on this worker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from core.catalog import BUILTIN_MODELS, builtin_path, is_builtin_ready, is_prepared
from core.config import Settings
from core.db import session_factory, session_scope
from core.models import Model


class ModelUnavailable(Exception):
    pass


def resolve_base_model(
    name: str, *, settings: Settings, progress: Callable[[str], None] | None = None
) -> Path:
    """A registered local directory, or a built-in model prepared into the models cache on first
    use (the conversion of SmolLM2 takes about 15 s on a CPU)."""
    factory = session_factory(settings.resolved_database_url)
    with session_scope(factory) as session:
        row = session.scalar(select(Model).where(Model.id == name))
        source, path = (row.source, row.path) if row else ("builtin", None)
    if source != "builtin":
        if not path or not is_prepared(Path(path)):
            raise ModelUnavailable(f"Model {name!r} has no loadable directory at {path!r}.")
        return Path(path)
    if name not in BUILTIN_MODELS:
        raise ModelUnavailable(f"Model {name!r} is not registered.")
    target = builtin_path(settings.resolved_models_dir, name)
    if not is_builtin_ready(target):
        from defense.modeling import prepare_builtin

        if progress:
            progress(f"Preparing base model {name} (first use on this worker).")
        prepare_builtin(name, settings.resolved_models_dir)
    with session_scope(factory) as session:
        row = session.scalar(select(Model).where(Model.id == name))
        if row is not None:
            row.status = "ready"
    return target
