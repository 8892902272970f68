"""Worker recovery on real parts (tiny-gpt2, a real Celery worker process, real databases):
heartbeats through a slow safety evaluation, a lost claim stops all writes, SIGTERM preemption,
disk-full deferral, resume with the recorded run config, the sweeper's resend grace and
screening recovery."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from openai import OpenAI
from safetensors.torch import load_file
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from core import jobs
from core.accounts import get_or_create_tenant
from core.config import Settings
from core.db import session_factory, session_scope
from core.models import Checkpoint, File, Job, JobEvent, Model, now
from tests.worker.conftest import REPO, Keys, settings_env
from tests.worker.test_end_to_end import _training_file
from worker import preemption, runner, sweeper
from worker.errors import tenant_message

pytestmark = pytest.mark.timeout(300)


def _fast(settings: Settings) -> Settings:
    """Only the final checkpoint is scored, on two prompts each way: these tests are about
    recovery, not scores."""
    return settings.model_copy(
        update={
            "checkpoint_every": 1000,
            "safety_eval_harmful": 2,
            "safety_eval_benign": 2,
            "safety_eval_max_new_tokens": 4,
        }
    )


def _client(base_url: str, key: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key=key, max_retries=0)


def _create_job(base_url: str, key: str, *, n_lines: int, seed: int = 7) -> str:
    client = _client(base_url, key)
    uploaded = client.files.create(
        file=("train.jsonl", io.BytesIO(_training_file(n_lines))), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model="tiny-gpt2",
        training_file=uploaded.id,
        hyperparameters={"n_epochs": 1, "batch_size": 1},
        seed=seed,
    )
    return job.id


def _row(settings: Settings, job_id: str) -> Job:
    with session_scope(session_factory(settings.resolved_database_url)) as s:
        row = s.execute(select(Job).where(Job.id == job_id)).scalar_one()
        s.expunge(row)
        return row


def _wait(predicate: Callable[[], bool], *, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log and log.exists() else ""
            pytest.fail(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.1)


def _adapter(settings: Settings, job_id: str) -> dict[str, object]:
    path = runner.job_adapter_dir(settings.resolved_artifacts_dir, job_id)
    return load_file(str(path / "adapter_model.safetensors"))


def _same_tensors(a: dict[str, object], b: dict[str, object]) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)  # type: ignore[union-attr]


def _in_thread(settings: Settings, job_id: str, worker: str) -> threading.Thread:
    thread = threading.Thread(
        target=runner.run_job,
        kwargs={
            "job_id": job_id,
            "settings": settings,
            "worker_id": worker,
            "send": lambda _id, _k: None,
        },
        daemon=True,
    )
    thread.start()
    return thread


@pytest.mark.parametrize("backend", ["production"])
def test_heartbeats_through_a_slow_safety_evaluation(
    live_api: str, keys: Keys, service_settings: Settings
) -> None:
    """A starting safety evaluation longer than the stale limit: the job keeps its heartbeat, so
    a sweeper running all along never re-queues it, and it succeeds on its first attempt."""
    settings = service_settings.model_copy(
        update={
            "stale_after_s": 1.0,
            "heartbeat_interval_s": 0.2,
            "checkpoint_every": 1000,  # only the final checkpoint is evaluated
            "safety_eval_harmful": 8,
            "safety_eval_benign": 8,
            "safety_eval_max_new_tokens": 200,
        }
    )
    job_id = _create_job(live_api, keys.user, n_lines=10)
    thread = _in_thread(settings, job_id, "slow-eval-worker")
    started, sweeps = time.monotonic(), 0
    while thread.is_alive():
        sweeper.sweep(settings=settings, send=lambda _id, _k: None)
        sweeps += 1
        time.sleep(0.3)
    row = _row(settings, job_id)
    assert row.status == "succeeded", row.error_message
    assert row.attempt == 1, row.attempt
    with session_scope(session_factory(settings.resolved_database_url)) as s:
        events = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id)))
    assert not any("stopped responding" in e.message for e in events)
    began = next(e.created_at for e in events if "Evaluating the safety" in e.message)
    ended = next(e.created_at for e in events if "Starting model safety" in e.message)
    # The evaluation outlasted the stale limit (whole seconds: > 1 s means >= 2).
    assert ended - began >= 2 * settings.stale_after_s, (began, ended, time.monotonic() - started)
    assert sweeps > 3


@pytest.mark.parametrize("backend", ["production"])
def test_a_lost_claim_stops_every_write(
    live_api: str, keys: Keys, service_settings: Settings
) -> None:
    """The sweeper hands the job to another attempt mid-training: the first worker stops within
    a step and writes no event, checkpoint row or job column after that."""
    service_settings = _fast(service_settings).model_copy(update={"checkpoint_every": 2})
    job_id = _create_job(live_api, keys.user, n_lines=40)
    factory = session_factory(service_settings.resolved_database_url)
    thread = _in_thread(service_settings, job_id, "old-worker")
    _wait(lambda: _row(service_settings, job_id).step >= 2, timeout=120, what="training")
    with session_scope(factory) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="queued", worker_id=None, heartbeat_at=now())
        )
        taken = jobs.claim(s, job_id, "new-worker")
        assert taken is not None
    with session_scope(factory) as s:
        events = s.scalar(select(func.count()).where(JobEvent.job_id == job_id))
        checkpoints = s.scalar(select(func.count()).where(Checkpoint.job_id == job_id))
    thread.join(timeout=30)
    assert not thread.is_alive()
    row = _row(service_settings, job_id)
    assert (row.status, row.worker_id, row.attempt) == ("running", "new-worker", taken.attempt)
    with session_scope(factory) as s:
        assert s.scalar(select(func.count()).where(JobEvent.job_id == job_id)) == events
        assert s.scalar(select(func.count()).where(Checkpoint.job_id == job_id)) == checkpoints


def _worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--queues", "training"],
            cwd=REPO,
            env=settings_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.parametrize("backend", ["production"])
def test_sigterm_preempts_a_real_worker_and_another_resumes(
    live_api: str, keys: Keys, service_settings: Settings
) -> None:
    """SIGTERM to a training worker mid-job: checkpoint at the next step, the job back to queued
    with its attempt given back, the process gone within one step + 10 s; a second worker
    resumes it to the same adapter as an uninterrupted run, no step trained twice."""
    settings = _fast(service_settings)
    log = settings.resolved_home / "worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    job_id = _create_job(live_api, keys.user, n_lines=24)
    first = _worker(settings, log)
    try:
        _wait(lambda: _row(settings, job_id).step >= 2, timeout=180, what="training", log=log)
        os.kill(first.pid, signal.SIGTERM)
        stopped = time.monotonic()
        first.wait(timeout=30)
        assert time.monotonic() - stopped < 15, "the worker took too long to stop"
    finally:
        _stop(first)
    row = _row(settings, job_id)
    assert (row.status, row.attempt, row.worker_id) == ("queued", 0, None), log.read_text()[-3000:]
    preempted_at = row.step

    second = _worker(settings, log)
    try:
        _wait(
            lambda: _row(settings, job_id).status in {"succeeded", "failed"},
            timeout=180,
            what="the resumed job",
            log=log,
        )
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=30)
    row = _row(settings, job_id)
    assert row.status == "succeeded" and row.attempt == 1, row.error_message
    with session_scope(session_factory(settings.resolved_database_url)) as s:
        events = list(
            s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq))
        )
    back = next(i for i, e in enumerate(events) if "back in the queue" in e.message)
    resumed = [
        int(e.data["step"])
        for e in events[back:]
        if e.type == "metrics" and e.data and "train_loss" in e.data and "total_steps" in e.data
    ]
    assert resumed and min(resumed) > preempted_at, (preempted_at, resumed)

    reference = _create_job(live_api, keys.user, n_lines=24)
    runner.run_job(reference, settings=settings, worker_id="reference")
    assert _row(settings, reference).status == "succeeded"
    assert _same_tensors(_adapter(settings, job_id), _adapter(settings, reference))


@pytest.mark.parametrize("backend", ["embedded"])
def test_resume_uses_the_run_config_recorded_at_the_start(
    live_api: str, keys: Keys, service_settings: Settings
) -> None:
    """Preempted in-process, then the provider changes tau and a setting: the resume trains
    with the values the job started with (its checkpoints match) and succeeds."""
    factory = session_factory(service_settings.resolved_database_url)
    with session_scope(factory) as s:
        s.execute(update(Model).where(Model.id == "tiny-gpt2").values(policy={"tau": 1.0}))
    service_settings = _fast(service_settings)
    job_id = _create_job(live_api, keys.user, n_lines=16)
    thread = _in_thread(service_settings, job_id, "first")
    try:
        _wait(lambda: _row(service_settings, job_id).step >= 2, timeout=120, what="training")
        preemption.request("test")
        thread.join(timeout=60)
    finally:
        preemption.reset()
    row = _row(service_settings, job_id)
    assert (row.status, row.attempt) == ("queued", 0)
    with session_scope(factory) as s:
        s.execute(update(Model).where(Model.id == "tiny-gpt2").values(policy={"tau": 0.25}))
    changed = service_settings.model_copy(update={"base_learning_rate": 1e-2})
    runner.run_job(job_id, settings=changed, worker_id="second")
    row = _row(service_settings, job_id)
    assert row.status == "succeeded", row.error_message
    assert row.defense_params == {"tau": 1.0} and row.run_config is not None
    assert row.run_config["settings"]["base_learning_rate"] == service_settings.base_learning_rate


@pytest.mark.parametrize("backend", ["embedded"])
def test_disk_full_during_a_checkpoint_is_retried_later(
    live_api: str, keys: Keys, service_settings: Settings, tmp_path: Path
) -> None:
    """Artifacts on a tiny tmpfs filled up: the checkpoint write fails with ENOSPC, the job goes
    back to queued with a retry time (no attempt used, no checkpoint listed without its files);
    once space is back it succeeds."""
    service_settings = _fast(service_settings)
    mount = service_settings.resolved_artifacts_dir
    mount.mkdir(parents=True, exist_ok=True)
    if any(mount.iterdir()):
        pytest.skip("artifacts directory already in use")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        job_id = _create_job(live_api, keys.user, n_lines=10)
        filler = mount / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        runner.run_job(job_id, settings=service_settings, worker_id="full-disk")
        row = _row(service_settings, job_id)
        assert (row.status, row.attempt, row.env_retries) == ("queued", 0, 1)
        assert row.retry_at is not None and row.retry_at > now()
        with session_scope(session_factory(service_settings.resolved_database_url)) as s:
            assert s.scalar(select(func.count()).where(Checkpoint.job_id == job_id)) == 0
            message = s.scalars(
                select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
            ).all()[-1]
        assert "retries in" in message and str(mount) not in message
        runner.run_job(job_id, settings=service_settings, worker_id="too-early")
        assert _row(service_settings, job_id).status == "queued"  # not claimable before retry_at
        filler.unlink()
        with session_scope(session_factory(service_settings.resolved_database_url)) as s:
            s.execute(update(Job).where(Job.id == job_id).values(retry_at=now()))
        runner.run_job(job_id, settings=service_settings, worker_id="space-again")
        row = _row(service_settings, job_id)
        assert (row.status, row.attempt) == ("succeeded", 1), row.error_message
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def _queued_job(factory: sessionmaker[Session], **values: object) -> str:
    with factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        job = Job(tenant_id=tenant.id, model="tiny-gpt2", training_file="file-x", seed=1)
        job.status = "queued"
        for key, value in values.items():
            setattr(job, key, value)
        session.add(job)
        session.flush()
        return job.id


def test_sweeper_resends_a_queued_job_only_after_its_grace(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    at = now()
    fresh = _queued_job(session_factory, enqueued_at=at - 10)
    once = _queued_job(session_factory, enqueued_at=at - 10_000, sent_at=at - 400, sends=1)
    twice = _queued_job(session_factory, enqueued_at=at - 10_000, sent_at=at - 400, sends=2)
    deferred = _queued_job(session_factory, enqueued_at=at - 10_000, retry_at=at + 600)
    due = _queued_job(session_factory, enqueued_at=at - 10_000, retry_at=at - 1)
    sent: list[tuple[str, str]] = []
    sweeper.sweep(settings=settings, send=lambda job_id, kind: sent.append((job_id, kind)))
    assert sorted(sent) == sorted([(once, "fine_tune"), (due, "fine_tune")])
    assert fresh and twice and deferred
    sweeper.sweep(settings=settings, send=lambda job_id, kind: sent.append((job_id, kind)))
    assert len(sent) == 2  # each re-send restarts (and doubles) the grace
    with session_factory.begin() as s:
        assert s.scalar(select(Job.sends).where(Job.id == once)) == 2


def test_a_screening_whose_worker_died_is_recovered(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    def running(attempts: int) -> str:
        with session_factory.begin() as s:
            tenant = get_or_create_tenant(s, "acme")
            row = File(
                tenant_id=tenant.id, filename="f.jsonl", purpose="fine-tune", bytes=1,
                sha256="0" * 64, storage_key="k", status="processed", safety_status="running",
                safety_worker="dead", safety_heartbeat_at=now() - 10_000,
                safety_attempts=attempts, created_at=now(),
            )  # fmt: skip
            s.add(row)
            s.flush()
            return row.id

    retry, give_up = running(1), running(settings.screening_max_attempts)
    files: list[str] = []
    sweeper.sweep(settings=settings, send=lambda _id, _k: None, send_file=files.append)
    assert files == [retry]
    with session_factory.begin() as s:
        assert s.scalar(select(File.safety_status).where(File.id == retry)) == "queued"
        failed = s.execute(select(File).where(File.id == give_up)).scalar_one()
        assert failed.safety_status == "failed" and "stopped responding" in str(
            failed.safety_report
        )


def test_tenant_messages_hide_server_paths() -> None:
    text = "checkpoint_dir: /srv/ftaas/artifacts/jobs/ftjob-1/checkpoints/step-000002 belongs"
    assert tenant_message(text) == "checkpoint_dir: <path> belongs"
    assert tenant_message("No file /home/x/adapter_config.json") == (
        "No file <path>/adapter_config.json"
    )


@pytest.mark.parametrize("backend", ["embedded"])
def test_a_pending_alignment_shows_its_progress(
    live_api: str, keys: Keys, service_settings: Settings
) -> None:
    """``ftaas models list`` and GET /admin/models/{id} show step, percent and time left."""
    import httpx

    from core.alignments import create_alignment_job

    factory = session_factory(service_settings.resolved_database_url)
    with session_scope(factory) as s:
        tenant = get_or_create_tenant(s, "admin")
        job = create_alignment_job(
            s,
            base="tiny-gpt2",
            method="antibody",
            hyperparameters={},
            tenant_id=tenant.id,
            settings=service_settings,
        )
        job.status, job.step, job.total_steps = "running", 30, 120
        jobs.add_event(
            s,
            job,
            "Step 30/120",
            type="metrics",
            data={"step": 30, "total_steps": 120, "estimated_finish": now() + 7200},
        )
    reply = httpx.get(
        f"{live_api.removesuffix('/v1')}/admin/models/tiny-gpt2-antibody",
        headers={"Authorization": f"Bearer {keys.admin}"},
    )
    assert reply.status_code == 200, reply.text
    progress = reply.json()["alignment"]
    assert (progress["step"], progress["total_steps"], progress["percent"]) == (30, 120, 25.0)
    assert 7100 <= progress["eta_s"] <= 7200 and progress["eta"] == "2.0 h"
    listed = subprocess.run(
        [sys.executable, "-m", "cli.main", "models", "list"],
        cwd=REPO,
        env={**settings_env(service_settings), "COLUMNS": "400"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "step 30/120 (25.0%), about 2.0 h left" in listed.stdout + listed.stderr


def test_checkpoint_folders_without_rows_are_listed_and_leftovers_pruned(
    settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """A kill between a checkpoint's files and its row (or during its evaluation) loses no
    checkpoint: the next attempt lists complete folders, removes incomplete ones and
    interrupted writes, and keeps only the newest ``keep``."""
    from worker.reporting import JobReporter

    job_id = _queued_job(session_factory, enqueued_at=now())
    with session_factory.begin() as s:
        claim = jobs.claim(s, job_id, "w")
    assert claim is not None
    root = tmp_path / "store"
    checkpoints = root / "jobs" / job_id / "checkpoints"
    for step in (2, 4, 6, 8):
        folder = checkpoints / f"step-{step:06d}"
        (folder / "adapter").mkdir(parents=True)
        (folder / "metrics.json").write_text(f'{{"step": {step}, "train_loss": 1.5}}')
        (folder / "COMPLETE").write_text(f"{step}\n")
    (checkpoints / "step-000010" / "adapter").mkdir(parents=True)  # no COMPLETE: half written
    (checkpoints / ".tmp-step-000010-abc").mkdir()
    reporter = JobReporter(session_factory, claim, interval_s=0.2)
    reporter.begin(
        total_steps=20,
        checkpoint_name=lambda step: f"ckpt-{step}",
        store_root=root,
        keep=3,
        checkpoint_dir=checkpoints,
        checkpoint_every=2,
    )
    with session_factory.begin() as s:
        rows = s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)).all()
        listed = sorted((r.step_number, r.train_loss) for r in rows)
    assert listed == [(4, 1.5), (6, 1.5), (8, 1.5)]
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "step-000004",
        "step-000006",
        "step-000008",
    ]
