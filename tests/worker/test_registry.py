"""The worker registry with a real Celery worker: its row appears while idle, heartbeats, and is
marked stopped on a clean shutdown. That it shows the job it runs is checked where a job runs
anyway: tests/worker/test_end_to_end.py::test_cancel_running_job (both layouts)."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from sqlalchemy import select

from core.config import Settings
from core.db import session_factory, session_scope
from core.models import Worker
from tests.worker.test_end_to_end import _wait

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("backend", ["embedded"])  # the registry is in the database only
def test_idle_worker_registers_heartbeats_and_is_marked_stopped(
    worker_process: subprocess.Popen[bytes], service_settings: Settings
) -> None:
    factory = session_factory(service_settings.resolved_database_url)
    log = service_settings.resolved_home / "worker.log"

    def row() -> Worker | None:
        with session_scope(factory) as s:
            return s.scalar(select(Worker).where(Worker.pid == worker_process.pid))

    _wait(lambda: row() is not None, timeout=120, what="the worker to register", worker_log=log)
    idle = row()
    assert idle is not None
    # A worker started without --queues serves training, alignment and screening (one node name).
    assert idle.id.startswith("training+alignment+screening@")
    assert idle.queues == ["training", "alignment", "screening"]
    assert idle.current_job_id is None and idle.stopped_at is None
    assert idle.device == "cpu" and (idle.memory_used or 0) > 10_000_000
    assert (idle.memory_total or 0) > (idle.memory_used or 0)
    first_seen = idle.last_seen_at
    # Idle, it still heartbeats (the registry beats at most once a second).
    _wait(
        lambda: (r := row()) is not None and r.last_seen_at > first_seen,
        timeout=10,
        what="an idle heartbeat",
        worker_log=log,
    )

    os.killpg(worker_process.pid, signal.SIGTERM)
    worker_process.wait(timeout=30)
    stopped = row()
    assert stopped is not None and stopped.stopped_at is not None
