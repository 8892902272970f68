"""Structured logs: one JSON object per line, carrying the job id while a job runs."""

from __future__ import annotations

import json
import logging

import pytest

from core.config import Settings
from core.logs import configure_logging, job_context


@pytest.fixture
def restore_root() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_job_id(
    capsys: pytest.CaptureFixture[str], restore_root: object
) -> None:
    configure_logging(Settings(log_format="json", log_level="INFO", _env_file=None))
    log = logging.getLogger("worker.runner")
    with job_context("ftjob-abc"):
        log.info("step %d done", 3, extra={"step": 3})
        logging.getLogger("celery.app.trace").warning("from a library")
    log.info("idle")
    log.debug("hidden at INFO")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [entry["message"] for entry in lines] == ["step 3 done", "from a library", "idle"]
    assert [entry["job_id"] for entry in lines] == ["ftjob-abc", "ftjob-abc", None]
    assert lines[0]["level"] == "info" and lines[0]["logger"] == "worker.runner"
    assert lines[0]["step"] == 3
    assert lines[1]["level"] == "warning"


def test_text_lines_show_the_job_id(
    capsys: pytest.CaptureFixture[str], restore_root: object
) -> None:
    configure_logging(Settings(log_format="text", _env_file=None))
    with job_context("ftjob-xyz"):
        logging.getLogger("worker").info("hello")
    assert "[ftjob-xyz]" in capsys.readouterr().err
