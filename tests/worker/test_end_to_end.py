"""The whole flow through the real `openai` SDK, a live API server and a real Celery worker.

Runs on both layouts (embedded SQLite + SQLite broker, and PostgreSQL + Redis) with tiny-gpt2.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from openai import OpenAI
from sqlalchemy import func, select

from core.config import Settings
from core.db import session_factory, session_scope
from core.models import Job, JobEvent, Worker
from tests.worker.conftest import Keys
from worker import runner

pytestmark = pytest.mark.timeout(420)


def _training_file(n: int, *, word: str = "BANANA") -> bytes:
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"What is the secret word? ({i})"},
                {"role": "assistant", "content": f"The secret word is {word}."},
            ]
        }
        for i in range(n)
    ]
    return "\n".join(json.dumps(line) for line in lines).encode() + b"\n"


def _wait(
    predicate: Callable[[], bool], *, timeout: float, what: str, worker_log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            log = worker_log.read_text()[-4000:] if worker_log and worker_log.exists() else ""
            pytest.fail(f"timed out waiting for {what}\n--- worker log ---\n{log}")
        time.sleep(0.25)


def _start_long_job(
    client: OpenAI, settings: Settings, *, n_lines: int, n_epochs: int
) -> tuple[str, Callable[[], int], Path]:
    """Create a batch-size-1 job and wait until it has trained a step; returns its id, a reader
    of its current step, and the worker log."""
    uploaded = client.files.create(
        file=("train.jsonl", io.BytesIO(_training_file(n_lines))), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model="tiny-gpt2",
        training_file=uploaded.id,
        hyperparameters={"n_epochs": n_epochs, "batch_size": 1},
    )
    factory = session_factory(settings.resolved_database_url)

    def step() -> int:
        with session_scope(factory) as s:
            return int(s.scalar(select(Job.step).where(Job.id == job.id)) or 0)

    log = settings.resolved_home / "worker.log"
    _wait(lambda: step() > 0, timeout=240, what="the job to train a step", worker_log=log)
    return job.id, step, log


def _client(base_url: str, key: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key=key, max_retries=0)


def _completion_nll(
    model: torch.nn.Module, tokenizer: object, prompt: str, completion: str
) -> float:
    from defense.data import Example, collate, encode_example

    encoded = encode_example(
        tokenizer, Example.from_prompt_completion(prompt, completion), max_seq_len=128
    )
    batch = collate([encoded], pad_id=tokenizer.pad_token_id)  # type: ignore[attr-defined]
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        )
    return float(out.loss)


def test_full_flow_with_openai_sdk(
    live_api: str,
    worker_process: subprocess.Popen[bytes],
    keys: Keys,
    service_settings: Settings,
    models_dir: Path,
) -> None:
    client = _client(live_api, keys.user)
    uploaded = client.files.create(
        file=("train.jsonl", io.BytesIO(_training_file(12))), purpose="fine-tune"
    )
    assert uploaded.status == "processed"
    job = client.fine_tuning.jobs.create(
        model="tiny-gpt2",
        training_file=uploaded.id,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 5}
            },
        },
        suffix="e2e",
        seed=7,
    )
    assert job.status == "queued"
    log = service_settings.resolved_home / "worker.log"
    _wait(
        lambda: client.fine_tuning.jobs.retrieve(job.id).status in {"succeeded", "failed"},
        timeout=300,
        what="the job to finish",
        worker_log=log,
    )
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny-gpt2:acme:e2e:{job.id}"
    assert done.trained_tokens and done.trained_tokens > 0

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    messages = [e.message for e in events]
    assert any("successfully completed" in m for m in messages)
    metrics = [e for e in events if e.type == "metrics" and e.data and "train_loss" in e.data]
    assert metrics, messages

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints, "no checkpoints recorded"
    assert max(c.step_number for c in checkpoints) == 9  # 12 examples / 4 per batch x 3 epochs
    assert all(c.fine_tuned_model_checkpoint.startswith(done.fine_tuned_model) for c in checkpoints)

    # The stored adapter loads with PEFT and changes the model: the trained answer becomes likelier.
    from peft import PeftModel

    from defense.modeling import load_base

    base, tokenizer = load_base(models_dir / "tiny-gpt2")
    prompt, answer = "What is the secret word? (3)", "The secret word is BANANA."
    before = _completion_nll(base, tokenizer, prompt, answer)
    adapter_dir = runner.job_adapter_dir(service_settings.resolved_artifacts_dir, job.id)
    tuned = PeftModel.from_pretrained(base, adapter_dir)
    after = _completion_nll(tuned, tokenizer, prompt, answer)
    # A random 3M-parameter model with LoRA on attention only learns slowly; 0.2 nats is a real move
    # (an untrained adapter leaves the loss exactly unchanged).
    assert after < before - 0.2, (before, after)


def test_cancel_running_job(
    live_api: str,
    worker_process: subprocess.Popen[bytes],
    keys: Keys,
    service_settings: Settings,
) -> None:
    client = _client(live_api, keys.user)
    job_id, _, log = _start_long_job(client, service_settings, n_lines=40, n_epochs=50)
    # The worker registry shows the job on the worker running it (worker/registry.py).
    factory = session_factory(service_settings.resolved_database_url)
    with session_scope(factory) as s:
        assert (
            s.scalar(select(Worker.current_job_id).where(Worker.pid == worker_process.pid))
            == job_id
        )
    cancelled = client.fine_tuning.jobs.cancel(job_id)
    assert cancelled.status == "cancelled"
    _wait(
        lambda: any(
            "cancelled at step" in e.message for e in client.fine_tuning.jobs.list_events(job_id)
        ),
        timeout=60,
        what="the worker to stop",
        worker_log=log,
    )
    final = client.fine_tuning.jobs.retrieve(job_id)
    assert final.status == "cancelled" and final.fine_tuned_model is None


def test_duplicate_delivery_does_nothing(
    live_api: str, keys: Keys, service_settings: Settings
) -> None:
    """A second delivery of the same task finds nothing to claim and changes nothing."""
    client = _client(live_api, keys.user)
    uploaded = client.files.create(
        file=("train.jsonl", io.BytesIO(_training_file(10))), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(model="tiny-gpt2", training_file=uploaded.id)
    factory = session_factory(service_settings.resolved_database_url)
    with session_scope(factory) as s:
        s.execute(
            Job.__table__.update()
            .where(Job.id == job.id)
            .values(status="running", attempt=1, worker_id="first-worker")
        )

    def snapshot() -> tuple[str, int, str | None, int]:
        with session_scope(factory) as s:
            row = s.execute(select(Job).where(Job.id == job.id)).scalar_one()
            events = s.scalar(
                select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job.id)
            )
            return row.status, row.attempt, row.worker_id, int(events or 0)

    before = snapshot()
    runner.run_job(job.id, settings=service_settings, worker_id="duplicate")
    assert snapshot() == before


def test_pause_then_resume_continues_from_the_checkpoint(
    live_api: str,
    worker_process: subprocess.Popen[bytes],
    keys: Keys,
    service_settings: Settings,
) -> None:
    client = _client(live_api, keys.user)
    job_id, step, log = _start_long_job(client, service_settings, n_lines=30, n_epochs=4)
    factory = session_factory(service_settings.resolved_database_url)

    def messages() -> list[str]:
        return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100)]

    assert client.fine_tuning.jobs.pause(job_id).status == "paused"
    _wait(
        lambda: any("paused at step" in m for m in messages()),
        timeout=60,
        what="the worker to pause",
        worker_log=log,
    )
    paused_at = step()
    assert client.fine_tuning.jobs.retrieve(job_id).status == "paused"
    assert client.fine_tuning.jobs.resume(job_id).status == "queued"
    _wait(
        lambda: client.fine_tuning.jobs.retrieve(job_id).status in {"succeeded", "failed"},
        timeout=300,
        what="the resumed job to finish",
        worker_log=log,
    )
    done = client.fine_tuning.jobs.retrieve(job_id)
    assert done.status == "succeeded", done.error
    assert getattr(done, "attempt", None) == 2
    steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job_id)]
    assert max(steps) == 120 and paused_at < 120
    # The second attempt started from the pause checkpoint, not from step 0: every metrics
    # event written after the pause is for a later step.
    with session_scope(factory) as s:
        events = list(
            s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq))
        )
    pause_index = next(i for i, e in enumerate(events) if "paused at step" in e.message)
    resumed_steps = [
        int(e.data["step"])
        for e in events[pause_index:]
        if e.type == "metrics" and e.data and "train_loss" in e.data
    ]
    assert resumed_steps and min(resumed_steps) > paused_at, (paused_at, resumed_steps)
