"""`ftaas models align` and `ftaas serve`'s first-start alignment (the parts without a worker)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cli.main import _first_start_alignment
from core.config import Settings
from core.db import session_factory, session_scope
from core.models import Job, Model
from tests.worker.conftest import REPO, settings_env


def _alignments(settings: Settings) -> int:
    with session_scope(session_factory(settings.resolved_database_url)) as s:
        count = s.scalar(select(func.count()).select_from(Job).where(Job.kind == "alignment"))
        return int(count or 0)


def test_first_start_queues_the_default_models_alignment_once(
    service_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    _first_start_alignment(service_settings.model_copy(update={"align_on_first_start": False}))
    assert _alignments(service_settings) == 0

    _first_start_alignment(service_settings)
    err = capsys.readouterr().err
    assert "First start: aligning tiny-gpt2 with antibody" in " ".join(err.split())
    assert "Estimated time on a CPU" in " ".join(err.split())
    with session_scope(session_factory(service_settings.resolved_database_url)) as s:
        row = s.scalar(select(Model).where(Model.id == "tiny-gpt2-antibody"))
        assert row is not None and row.status == "pending"
    _first_start_alignment(service_settings)  # pending: nothing more to do
    assert _alignments(service_settings) == 1


@pytest.mark.parametrize("backend", ["embedded"])
def test_align_rejects_an_unknown_base(service_settings: Settings, models_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "models", "align", "--base", "nope", "--method", "sft"],
        cwd=REPO,
        env=settings_env(service_settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "not a registered base model" in done.stderr
    assert _alignments(service_settings) == 0
