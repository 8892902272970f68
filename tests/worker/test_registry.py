"""The worker registry with a real Celery worker: its row appears while idle, shows the job it
runs, and is marked stopped on a clean shutdown."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess

import pytest
from openai import OpenAI
from sqlalchemy import select

from core.config import Settings
from core.db import session_factory, session_scope
from core.models import File, Tenant, Worker
from core.storage import ArtifactStore, file_key
from tests.worker.conftest import Keys
from tests.worker.test_end_to_end import _training_file, _wait

pytestmark = pytest.mark.timeout(300)


def _queue_job(base_url: str, key: str, settings: Settings) -> str:
    """A long job through the real API, on a training file stored directly (an upload would
    queue its screening first, which this test does not need to wait for)."""
    content = _training_file(40)
    store = ArtifactStore(settings.resolved_artifacts_dir)
    with session_scope(session_factory(settings.resolved_database_url)) as s:
        tenant_id = s.scalars(select(Tenant.id).where(Tenant.name == "acme")).one()
        row = File(
            tenant_id=tenant_id,
            filename="train.jsonl",
            purpose="fine-tune",
            bytes=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            storage_key="",
            status="processed",
            n_examples=40,
            data_format="chat",
        )
        s.add(row)
        s.flush()
        row.storage_key = file_key(row.id)
        store.write_stream(row.storage_key, [content])
        file_id = row.id
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0)
    job = client.fine_tuning.jobs.create(
        model="tiny-gpt2", training_file=file_id, hyperparameters={"n_epochs": 50}
    )
    return job.id


@pytest.mark.parametrize("backend", ["embedded"])  # the registry is in the database only
def test_worker_registers_heartbeats_and_shows_its_job(
    live_api: str,
    worker_process: subprocess.Popen[bytes],
    keys: Keys,
    service_settings: Settings,
) -> None:
    factory = session_factory(service_settings.resolved_database_url)
    log = service_settings.resolved_home / "worker.log"

    def row() -> Worker | None:
        with session_scope(factory) as s:
            return s.scalar(select(Worker).where(Worker.pid == worker_process.pid))

    _wait(lambda: row() is not None, timeout=120, what="the worker to register", worker_log=log)
    idle = row()
    assert idle is not None
    assert idle.id.startswith("training@") and idle.queues == ["training"]
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

    job_id = _queue_job(live_api, keys.user, service_settings)
    _wait(
        lambda: (r := row()) is not None and r.current_job_id == job_id,
        timeout=60,
        what="the registry to show the running job",
        worker_log=log,
    )
    OpenAI(base_url=live_api, api_key=keys.user, max_retries=0).fine_tuning.jobs.cancel(job_id)
    _wait(
        lambda: (r := row()) is not None and r.current_job_id is None,
        timeout=60,
        what="the registry to clear the job",
        worker_log=log,
    )

    os.killpg(worker_process.pid, signal.SIGTERM)
    worker_process.wait(timeout=30)
    stopped = row()
    assert stopped is not None and stopped.stopped_at is not None
