"""Resolve a model name to prepared directories on this worker, and load it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from core.catalog import BUILTIN_MODELS, builtin_path, is_builtin_ready, is_prepared
from core.config import Settings
from core.db import session_factory, session_scope
from core.model_status import ModelStatus, set_model_status
from core.models import Model
from worker.errors import ModelUnavailable

# Written by PeftModel.save_pretrained; a directory without it is no adapter.
ADAPTER_CONFIG = "adapter_config.json"


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
            set_model_status(row, ModelStatus.READY)
    return target


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights live: a base model directory, plus a LoRA adapter for an aligned
    model (stage 1 of the defense)."""

    model_id: str
    base_id: str
    base_path: Path
    adapter_path: Path | None = None

    @property
    def is_aligned(self) -> bool:
        return self.adapter_path is not None


def locate_model(
    name: str, *, settings: Settings, progress: Callable[[str], None] | None = None
) -> ModelSource:
    """The directories of ``name``: an aligned model resolves to its base (prepared on first use)
    and its adapter, which must be ready on disk."""
    factory = session_factory(settings.resolved_database_url)
    with session_scope(factory) as session:
        row = session.scalar(select(Model).where(Model.id == name))
        aligned = None
        if row is not None and row.kind == "aligned":
            aligned = (row.status, row.base_model, row.adapter_path)
    if aligned is None:
        return ModelSource(
            name, name, resolve_base_model(name, settings=settings, progress=progress)
        )
    status, base, adapter = aligned
    if (
        status != "ready"
        or not base
        or not adapter
        or not (Path(adapter) / ADAPTER_CONFIG).exists()
    ):
        raise ModelUnavailable(
            f"The pre-aligned model {name!r} is not ready (status {status}, adapter {adapter!r})."
        )
    base_path = resolve_base_model(base, settings=settings, progress=progress)
    return ModelSource(name, base, base_path, Path(adapter))


def load_model(source: ModelSource, *, trainable: bool, device: str) -> tuple[Any, Any]:
    """(model, tokenizer) on ``device``: the base alone (eval mode), or base + adapter as a
    ``PeftModel`` whose LoRA tensors require grad when ``trainable``."""
    import torch

    from defense.modeling import load_base, load_with_adapter

    model: Any
    if source.adapter_path is None:
        model, tokenizer = load_base(source.base_path)
    else:
        model, tokenizer = load_with_adapter(
            source.base_path, source.adapter_path, trainable=trainable
        )
    model.to(torch.device(device))
    return model, tokenizer


def resolve_device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
