"""Pre-aligned adapters shipped with the project, so the default model is served defended from
the first minute instead of after a multi-hour CPU alignment.

Each shipped adapter lives in ``core/shipped/<aligned id>/``: the PEFT adapter files and a
``manifest.json`` written by ``scripts/ship_aligned.py`` from a finished alignment job of this
project (its lineage, safety scores and the job's provenance) with the SHA-256 of every file and of
the base model's prepared weights. ``install_shipped`` verifies those digests, copies the adapter
into the models cache and registers the aligned model row ``ready``; it never replaces an aligned
model that is ready or being aligned. A provider re-aligns at any time (``ftaas models align``):
the new adapter replaces the shipped copy in the same folder.

Choices where the contract is open (named here and in docs/shipped-adapter.md):

* The base weights are checked only when the base is already prepared in the cache (``ftaas
  serve`` prepares it first); with ``--no-prepare`` the adapter is registered on its own digests
  and the base is checked by nothing but the build record's source name.
* A digest mismatch refuses the adapter (nothing is registered) and the caller falls back to the
  first-start alignment, saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.catalog import BUILD_RECORD
from core.model_status import ModelStatus, set_model_status
from core.models import Model

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
MANIFEST = "manifest.json"
BASE_WEIGHTS = "model.safetensors"
SHIPPED_SOURCE = "shipped"
"""``models.source`` of an aligned model installed from a shipped adapter."""


@dataclass(frozen=True)
class ShippedAdapter:
    """One shipped adapter, as its manifest describes it."""

    folder: Path
    model_id: str
    base: str
    method: str
    files: dict[str, str]  # adapter file name -> SHA-256
    base_weights_sha256: str | None
    base_build: dict[str, Any]
    lineage: dict[str, Any]
    safety: dict[str, Any]

    @classmethod
    def load(cls, folder: Path) -> ShippedAdapter:
        data = json.loads((folder / MANIFEST).read_text())
        return cls(
            folder=folder,
            model_id=str(data["model"]),
            base=str(data["base"]),
            method=str(data["method"]),
            files={str(k): str(v) for k, v in data["files"].items()},
            base_weights_sha256=data.get("base_weights_sha256"),
            base_build=dict(data.get("base_build") or {}),
            lineage=dict(data["lineage"]),
            safety=dict(data["safety"]),
        )


@dataclass(frozen=True)
class Installed:
    """What ``install_shipped`` did: ``registered``, ``present`` (an aligned model is already
    ready or pending), ``none`` (nothing shipped for this base and method) or ``rejected``."""

    outcome: str
    model_id: str | None = None
    message: str = ""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_adapters(root: Path = SHIPPED_DIR) -> list[ShippedAdapter]:
    if not root.is_dir():
        return []
    return [ShippedAdapter.load(d) for d in sorted(root.iterdir()) if (d / MANIFEST).is_file()]


def find_shipped(base: str, method: str, *, root: Path = SHIPPED_DIR) -> ShippedAdapter | None:
    for shipped in shipped_adapters(root):
        if shipped.base == base and shipped.method == method:
            return shipped
    return None


def verify(shipped: ShippedAdapter, *, base_dir: Path) -> list[str]:
    """Every way the shipped files or the prepared base differ from the manifest (empty: none)."""
    problems = []
    for name, expected in shipped.files.items():
        path = shipped.folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(path) != expected:
            problems.append(f"{name} does not match its SHA-256 {expected[:12]}…")
    record = base_dir / BUILD_RECORD
    if record.is_file():
        build = json.loads(record.read_text())
        for key, expected in shipped.base_build.items():
            if build.get(key) != expected:
                problems.append(
                    f"the prepared base {shipped.base} was built from {key}={build.get(key)!r}, "
                    f"the adapter from {expected!r}"
                )
    weights = base_dir / BASE_WEIGHTS
    if shipped.base_weights_sha256 and weights.is_file():
        if sha256_file(weights) != shipped.base_weights_sha256:
            problems.append(
                f"the prepared base {shipped.base}'s weights differ from those the adapter "
                "was trained on"
            )
    return problems


def install_shipped(
    session: Session, *, base: str, method: str, models_dir: Path, root: Path = SHIPPED_DIR
) -> Installed:
    """Register the shipped ``<base>-<method>`` adapter as a ready aligned model, once.

    Flushes, does not commit. Never touches an aligned row that is ready or pending."""
    shipped = find_shipped(base, method, root=root)
    if shipped is None:
        return Installed("none")
    row = session.scalar(select(Model).where(Model.id == shipped.model_id))
    if row is not None and row.status in ("ready", "pending"):
        return Installed("present", shipped.model_id, f"{shipped.model_id} is {row.status}")
    base_row = session.scalar(select(Model).where(Model.id == base))
    if base_row is None or base_row.kind != "base":
        return Installed("rejected", shipped.model_id, f"{base!r} is not a registered base model")
    problems = verify(shipped, base_dir=models_dir / base)
    if problems:
        return Installed("rejected", shipped.model_id, "; ".join(problems))
    adapter_dir = _copy_adapter(shipped, models_dir / shipped.model_id / "adapter")
    if row is None:
        row = Model(id=shipped.model_id, owned_by="system")
        session.add(row)
    row.kind, row.source = "aligned", SHIPPED_SOURCE
    set_model_status(row, ModelStatus.READY)
    row.base_model, row.method = shipped.base, shipped.method
    row.adapter_path = row.path = str(adapter_dir)
    row.alignment_job_id = None
    row.lineage = {
        **shipped.lineage,
        "shipped": {"files": shipped.files, "base_weights_sha256": shipped.base_weights_sha256},
    }
    row.safety = dict(shipped.safety)
    session.flush()
    return Installed("registered", shipped.model_id, f"{shipped.model_id} registered")


def _copy_adapter(shipped: ShippedAdapter, target: Path) -> Path:
    """Copy the adapter files next to ``target``, then rename into place (owner-only modes), so a
    crash leaves either no adapter or a whole one."""
    tmp = target.with_name(target.name + ".shipped.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, mode=0o700)
    for name in shipped.files:
        copy = tmp / name
        shutil.copyfile(shipped.folder / name, copy)
        os.chmod(copy, 0o600)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target
