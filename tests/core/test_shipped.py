"""Shipped pre-aligned adapters: verified by SHA-256, registered once, never over a live row."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import BUILD_RECORD
from core.db import session_scope
from core.models import Model
from core.shipped import (
    BASE_WEIGHTS,
    MANIFEST,
    SHIPPED_SOURCE,
    install_shipped,
    sha256_file,
    shipped_adapters,
    verify,
)

BASE = "demo-base"
ALIGNED = "demo-base-antibody"


def _ship(root: Path, models_dir: Path) -> Path:
    """A shipped folder for ``demo-base`` and a prepared base it was 'trained on'."""
    base_dir = models_dir / BASE
    base_dir.mkdir(parents=True)
    (base_dir / BASE_WEIGHTS).write_bytes(b"base weights")
    (base_dir / BUILD_RECORD).write_text(json.dumps({"name": BASE, "gguf": "demo.gguf"}))
    folder = root / ALIGNED
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(b"lora tensors")
    manifest = {
        "model": ALIGNED,
        "base": BASE,
        "method": "antibody",
        "files": {
            name: sha256_file(folder / name)
            for name in ("adapter_config.json", "adapter_model.safetensors")
        },
        "base_weights_sha256": sha256_file(base_dir / BASE_WEIGHTS),
        "base_build": {"gguf": "demo.gguf"},
        "lineage": {"base": BASE, "method": "antibody", "provenance": {"alignment_job": "j1"}},
        "safety": {"harmful_score": 0.1, "over_refusal": 0.2, "n_harmful": 40},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def shipped(tmp_path: Path, session_factory: sessionmaker[Session]) -> tuple[Path, Path]:
    root, models_dir = tmp_path / "shipped", tmp_path / "models"
    _ship(root, models_dir)
    with session_scope(session_factory) as session:
        session.add(Model(id=BASE, source="builtin", kind="base", status="ready"))
    return root, models_dir


def _install(factory: sessionmaker[Session], root: Path, models_dir: Path) -> str:
    with session_scope(factory) as session:
        return install_shipped(
            session, base=BASE, method="antibody", models_dir=models_dir, root=root
        ).outcome


def test_registers_a_ready_aligned_model_with_lineage_and_scores(
    shipped: tuple[Path, Path], session_factory: sessionmaker[Session]
) -> None:
    root, models_dir = shipped
    assert _install(session_factory, root, models_dir) == "registered"
    with session_scope(session_factory) as session:
        row = session.scalar(select(Model).where(Model.id == ALIGNED))
        assert row is not None
        assert (row.kind, row.source, row.status) == ("aligned", SHIPPED_SOURCE, "ready")
        assert (row.base_model, row.method) == (BASE, "antibody")
        assert row.safety == {"harmful_score": 0.1, "over_refusal": 0.2, "n_harmful": 40}
        assert row.lineage["provenance"] == {"alignment_job": "j1"}
        assert set(row.lineage["shipped"]["files"]) == {
            "adapter_config.json",
            "adapter_model.safetensors",
        }
        adapter = Path(str(row.adapter_path))
    assert (adapter / "adapter_model.safetensors").read_bytes() == b"lora tensors"
    assert stat.S_IMODE(adapter.stat().st_mode) == 0o700
    assert stat.S_IMODE((adapter / "adapter_config.json").stat().st_mode) == 0o600


def test_second_install_leaves_a_ready_or_pending_row_alone(
    shipped: tuple[Path, Path], session_factory: sessionmaker[Session]
) -> None:
    root, models_dir = shipped
    assert _install(session_factory, root, models_dir) == "registered"
    with session_scope(session_factory) as session:
        row = session.scalar(select(Model).where(Model.id == ALIGNED))
        assert row is not None
        row.status, row.safety = "pending", {"harmful_score": 0.5}
    assert _install(session_factory, root, models_dir) == "present"
    with session_scope(session_factory) as session:
        row = session.scalar(select(Model).where(Model.id == ALIGNED))
        assert row is not None and row.status == "pending"
        assert row.safety == {"harmful_score": 0.5}


def test_an_error_row_is_replaced_by_the_shipped_adapter(
    shipped: tuple[Path, Path], session_factory: sessionmaker[Session]
) -> None:
    root, models_dir = shipped
    with session_scope(session_factory) as session:
        session.add(Model(id=ALIGNED, source="aligned", kind="aligned", status="error"))
    assert _install(session_factory, root, models_dir) == "registered"


def test_a_tampered_adapter_is_refused_and_nothing_is_registered(
    shipped: tuple[Path, Path], session_factory: sessionmaker[Session]
) -> None:
    root, models_dir = shipped
    (root / ALIGNED / "adapter_model.safetensors").write_bytes(b"other tensors")
    with session_scope(session_factory) as session:
        installed = install_shipped(
            session, base=BASE, method="antibody", models_dir=models_dir, root=root
        )
    assert installed.outcome == "rejected"
    assert "adapter_model.safetensors does not match" in installed.message
    with session_scope(session_factory) as session:
        assert session.scalar(select(Model).where(Model.id == ALIGNED)) is None
    assert not (models_dir / ALIGNED).exists()


def test_a_different_base_build_is_refused(
    shipped: tuple[Path, Path], session_factory: sessionmaker[Session]
) -> None:
    root, models_dir = shipped
    (models_dir / BASE / BASE_WEIGHTS).write_bytes(b"re-quantised weights")
    problems = verify(shipped_adapters(root)[0], base_dir=models_dir / BASE)
    assert problems == [
        f"the prepared base {BASE}'s weights differ from those the adapter was trained on"
    ]
    assert _install(session_factory, root, models_dir) == "rejected"


def test_nothing_shipped_for_another_base(
    shipped: tuple[Path, Path], session_factory: sessionmaker[Session]
) -> None:
    root, models_dir = shipped
    with session_scope(session_factory) as session:
        outcome = install_shipped(
            session, base="other", method="antibody", models_dir=models_dir, root=root
        ).outcome
    assert outcome == "none"
