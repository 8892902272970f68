"""/v1/fine_tuning/jobs: create (validation, auto resolution, idempotency, enqueue), list, read,
cancel/pause/resume, events and checkpoints."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.queue import QueueClient
from core.config import Settings
from core.jobs import JobStatus
from core.models import Checkpoint, Job, JobEvent
from core.queue import TRAINING_QUEUE
from tests.api.helpers import (
    BASE_MODEL,
    Keys,
    Task,
    auth,
    chat_jsonl,
    create_job,
    queued_tasks,
    upload,
)


def set_job(factory: sessionmaker[Session], job_id: str, **values: Any) -> None:
    with factory() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def count_jobs(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def broker_messages(settings: Settings) -> int:
    """Messages waiting on the training queue, read from the broker itself."""
    if settings.resolved_broker_url.startswith("redis"):
        import redis

        return int(redis.Redis.from_url(settings.resolved_broker_url).llen(TRAINING_QUEUE))
    path = settings.resolved_broker_url.removeprefix("sqla+sqlite:///")
    with sqlite3.connect(path) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
                "WHERE q.name = ? AND m.visible",
                (TRAINING_QUEUE,),
            ).fetchone()[0]
        )


def test_create_job_shape(client: TestClient, keys: Keys, training_file: str) -> None:
    response = create_job(
        client, keys.a, training_file, suffix="my-model_1", metadata={"team": "x"}
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["id"].startswith("ftjob-")
    assert job["object"] == "fine_tuning.job"
    assert job["status"] == "queued"
    assert job["model"] == BASE_MODEL
    assert job["training_file"] == training_file
    assert job["validation_file"] is None
    assert job["fine_tuned_model"] is None and job["finished_at"] is None
    assert job["organization_id"].startswith("org-")
    assert job["result_files"] == [] and job["integrations"] == []
    assert job["error"] is None and job["trained_tokens"] is None
    assert job["metadata"] == {"team": "x"}
    assert job["user_provided_suffix"] == "my-model_1"
    assert isinstance(job["seed"], int)
    assert job["attempt"] == 0 and job["kind"] == "fine_tune"
    # Provider policy, recorded at creation: Antibody on the base (no aligned model exists).
    assert job["defense"] == "antibody" and job["defense_params"] == {"tau": 1.0}
    assert job["served_model"] == BASE_MODEL and job["safety"] is None
    # "auto" resolved: 12 examples -> cookbook heuristic 100 // 12 = 8 epochs.
    resolved = {"batch_size": 4, "learning_rate_multiplier": 1.0, "n_epochs": 8}
    assert job["hyperparameters"] == resolved
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": resolved}}


def test_requested_and_resolved_hyperparameters_are_stored(
    client: TestClient,
    keys: Keys,
    training_file: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}
    job = create_job(client, keys.a, training_file, method=method, seed=7).json()
    assert job["hyperparameters"] == {
        "batch_size": 4,
        "learning_rate_multiplier": 1.0,
        "n_epochs": 2,
    }
    assert job["seed"] == 7
    with session_factory() as session:
        row = session.scalar(select(Job).where(Job.id == job["id"]))
        assert row is not None
        assert row.hyperparameters == {
            "batch_size": "auto",
            "learning_rate_multiplier": "auto",
            "n_epochs": 2,
        }
        assert row.resolved_hyperparameters["learning_rate"] == pytest.approx(
            settings.base_learning_rate
        )
        assert row.enqueued_at is not None and row.request_hash


def test_deprecated_top_level_hyperparameters(
    client: TestClient, keys: Keys, training_file: str
) -> None:
    hp = {"n_epochs": 3, "batch_size": 16, "learning_rate_multiplier": 0.5}
    job = create_job(client, keys.a, training_file, hyperparameters=hp).json()
    assert job["hyperparameters"] == hp
    both = create_job(
        client,
        keys.a,
        training_file,
        hyperparameters={"n_epochs": 2},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
    )
    assert both.status_code == 400 and both.json()["error"]["param"] == "hyperparameters"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (
            {"hyperparameters": {"n_epochs": 0}},
            "hyperparameters.n_epochs",
            "invalid_hyperparameter",
        ),
        (
            {"hyperparameters": {"n_epochs": 51}},
            "hyperparameters.n_epochs",
            "invalid_hyperparameter",
        ),
        (
            {"hyperparameters": {"n_epochs": 2.5}},
            "hyperparameters.n_epochs",
            "invalid_hyperparameter",
        ),
        (
            {"hyperparameters": {"n_epochs": "3"}},
            "hyperparameters.n_epochs",
            "invalid_hyperparameter",
        ),
        (
            {"hyperparameters": {"n_epochs": True}},
            "hyperparameters.n_epochs",
            "invalid_hyperparameter",
        ),
        (
            {"hyperparameters": {"batch_size": 0}},
            "hyperparameters.batch_size",
            "invalid_hyperparameter",
        ),
        (
            {"hyperparameters": {"batch_size": 257}},
            "hyperparameters.batch_size",
            "invalid_hyperparameter",
        ),
        (
            {"hyperparameters": {"learning_rate_multiplier": 0}},
            "hyperparameters.learning_rate_multiplier",
            "invalid_hyperparameter",
        ),
        (
            {
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"learning_rate_multiplier": 10.5}},
                }
            },
            "method.supervised.hyperparameters.learning_rate_multiplier",
            "invalid_hyperparameter",
        ),
        ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup", "unknown_parameter"),
        ({"method": {"type": "dpo", "dpo": {}}}, "method.type", "invalid_method"),
        ({"method": {"type": "reinforcement"}}, "method.type", "invalid_method"),
        ({"suffix": "has space"}, "suffix", "invalid_suffix"),
        ({"suffix": "x" * 65}, "suffix", "invalid_suffix"),
        ({"seed": -1}, "seed", "invalid_seed"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata", "invalid_metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata", "invalid_metadata"),
        ({"metadata": {"k": 1}}, "metadata", "invalid_metadata"),
        (
            {"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]},
            "integrations",
            "invalid_integrations",
        ),
        ({"model": "no-such-model"}, "model", "model_not_found"),
        ({"model": "broken-model"}, "model", "model_not_found"),
        ({"training_file": "file-nope"}, "training_file", "invalid_training_file"),
        ({"validation_file": "file-nope"}, "validation_file", "invalid_validation_file"),
        ({"colour": "red"}, "colour", "unknown_parameter"),
        ({"model": None}, "model", "invalid_value"),
    ],
)
def test_create_job_validation_names_the_param(
    client: TestClient, keys: Keys, training_file: str, body: dict[str, Any], param: str, code: str
) -> None:
    payload = {"model": BASE_MODEL, "training_file": training_file, **body}
    response = client.post("/v1/fine_tuning/jobs", headers=auth(keys.a), json=payload)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert error["message"]


def test_missing_required_fields(client: TestClient, keys: Keys) -> None:
    response = client.post("/v1/fine_tuning/jobs", headers=auth(keys.a), json={"model": BASE_MODEL})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "training_file"
    assert response.json()["error"]["code"] == "missing_required_parameter"


def test_pending_model_is_accepted(client: TestClient, keys: Keys, training_file: str) -> None:
    assert create_job(client, keys.a, training_file, model="pending-model").status_code == 200


def test_validation_file(client: TestClient, keys: Keys, training_file: str) -> None:
    same = create_job(client, keys.a, training_file, validation_file=training_file)
    assert same.status_code == 400 and same.json()["error"]["param"] == "validation_file"
    other = upload(client, keys.a, chat_jsonl(10)).json()["id"]
    job = create_job(client, keys.a, training_file, validation_file=other).json()
    assert job["validation_file"] == other


def test_idempotent_create(
    client: TestClient, keys: Keys, training_file: str, session_factory: sessionmaker[Session]
) -> None:
    first = create_job(client, keys.a, training_file, seed=1)
    again = create_job(client, keys.a, training_file, seed=1)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert count_jobs(session_factory) == 1
    # A different body, or the same body with a different Idempotency-Key, is a new job.
    assert create_job(client, keys.a, training_file, seed=2).json()["id"] != first.json()["id"]
    keyed = client.post(
        "/v1/fine_tuning/jobs",
        headers={**auth(keys.a), "Idempotency-Key": "abc"},
        json={"model": BASE_MODEL, "training_file": training_file, "seed": 1},
    )
    assert keyed.json()["id"] != first.json()["id"]
    # Another tenant's identical-looking request is never folded into this tenant's job.
    assert count_jobs(session_factory) == 3


def test_resubmitting_a_cancelled_job_creates_a_new_one(
    client: TestClient, keys: Keys, training_file: str
) -> None:
    first = create_job(client, keys.a, training_file).json()["id"]
    client.post(f"/v1/fine_tuning/jobs/{first}/cancel", headers=auth(keys.a))
    assert create_job(client, keys.a, training_file).json()["id"] != first


def test_idempotency_window(
    client: TestClient, keys: Keys, training_file: str, session_factory: sessionmaker[Session]
) -> None:
    first = create_job(client, keys.a, training_file).json()["id"]
    set_job(session_factory, first, created_at=1)  # long ago
    assert create_job(client, keys.a, training_file).json()["id"] != first


def test_created_job_lands_on_the_broker(
    client: TestClient, keys: Keys, training_file: str, settings: Settings
) -> None:
    job = create_job(client, keys.a, training_file).json()
    runs = [t for t in queued_tasks(settings) if t.name == "ftaas.jobs.run"]
    assert runs == [Task("ftaas.jobs.run", [job["id"]])]


def test_enqueue_failure_still_returns_the_queued_job(
    client: TestClient,
    keys: Keys,
    training_file: str,
    monkeypatch: pytest.MonkeyPatch,
    session_factory: sessionmaker[Session],
) -> None:
    def broken(self: QueueClient, job_id: str) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(QueueClient, "send_run_job", broken)
    response = create_job(client, keys.a, training_file)
    assert response.status_code == 200 and response.json()["status"] == "queued"
    with session_factory() as session:
        row = session.scalar(select(Job).where(Job.id == response.json()["id"]))
        assert row is not None and row.status == "queued" and row.enqueued_at is not None


def test_created_event(client: TestClient, keys: Keys, job_id: str) -> None:
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=auth(keys.a)).json()
    assert events["object"] == "list"
    [event] = events["data"]
    assert event["object"] == "fine_tuning.job.event"
    assert event["message"] == f"Created fine-tuning job: {job_id}"
    assert event["level"] == "info" and event["type"] == "message"


def test_list_jobs_paginates_newest_first(
    client: TestClient, keys: Keys, training_file: str
) -> None:
    ids = [create_job(client, keys.a, training_file, seed=i).json()["id"] for i in range(3)]
    page = client.get("/v1/fine_tuning/jobs", params={"limit": 2}, headers=auth(keys.a)).json()
    assert [j["id"] for j in page["data"]] == [ids[2], ids[1]]
    assert page["has_more"] is True and page["last_id"] == ids[1]
    rest = client.get(
        "/v1/fine_tuning/jobs", params={"limit": 2, "after": ids[1]}, headers=auth(keys.a)
    ).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False


def test_list_jobs_metadata_filter(client: TestClient, keys: Keys, training_file: str) -> None:
    blue = create_job(
        client, keys.a, training_file, metadata={"team": "blue", "env": "prod"}
    ).json()["id"]
    red = create_job(client, keys.a, training_file, metadata={"team": "red"}).json()["id"]
    create_job(client, keys.a, training_file)

    def ids(params: dict[str, str]) -> list[str]:
        response = client.get("/v1/fine_tuning/jobs", params=params, headers=auth(keys.a))
        assert response.status_code == 200
        return [j["id"] for j in response.json()["data"]]

    assert ids({"metadata[team]": "blue"}) == [blue]
    assert ids({"metadata[team]": "red"}) == [red]
    assert ids({"metadata[team]": "blue", "metadata[env]": "prod"}) == [blue]
    assert ids({"metadata[team]": "blue", "metadata[env]": "dev"}) == []
    assert ids({'metadata[it\'s "odd"]': "x"}) == []
    assert len(ids({})) == 3


def test_cancel_queued_job(client: TestClient, keys: Keys, job_id: str) -> None:
    response = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth(keys.a))
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=auth(keys.a)).json()
    assert events["data"][0]["message"] == "Fine-tuning job cancelled"
    again = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth(keys.a))
    assert again.status_code == 409 and again.headers["x-should-retry"] == "false"


def test_cancel_succeeded_job_is_a_409(
    client: TestClient, keys: Keys, job_id: str, session_factory: sessionmaker[Session]
) -> None:
    set_job(session_factory, job_id, status=JobStatus.SUCCEEDED, finished_at=5)
    response = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth(keys.a))
    assert response.status_code == 409
    assert response.headers["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error["code"] == "job_not_cancellable" and "succeeded" in error["message"]
    assert (
        client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=auth(keys.a)).json()["status"]
        == "succeeded"
    )


def test_pause_and_resume(
    client: TestClient,
    keys: Keys,
    job_id: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    queued = client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=auth(keys.a))
    assert queued.status_code == 409 and queued.headers["x-should-retry"] == "false"
    assert queued.json()["error"]["code"] == "job_not_running"
    not_paused = client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=auth(keys.a))
    assert not_paused.status_code == 409 and not_paused.json()["error"]["code"] == "job_not_paused"

    set_job(session_factory, job_id, status=JobStatus.RUNNING, attempt=1, worker_id="w1")
    paused = client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=auth(keys.a))
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    before = broker_messages(settings)
    resumed = client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=auth(keys.a))
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    assert broker_messages(settings) == before + 1  # the task is sent again
    messages = [
        e["message"]
        for e in client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=auth(keys.a)).json()[
            "data"
        ]
    ]
    assert messages[:2] == [
        "Fine-tuning job resumed",
        "Fine-tuning job paused; it stops at its next checkpoint",
    ]


def test_failed_job_shows_its_error(
    client: TestClient, keys: Keys, job_id: str, session_factory: sessionmaker[Session]
) -> None:
    set_job(
        session_factory,
        job_id,
        status=JobStatus.FAILED,
        error_code="invalid_training_file",
        error_message="bad data",
        error_param="training_file",
    )
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=auth(keys.a)).json()
    assert job["status"] == "failed"
    assert job["error"] == {
        "code": "invalid_training_file",
        "message": "bad data",
        "param": "training_file",
    }


def test_events_paginate(
    client: TestClient, keys: Keys, job_id: str, session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        for step in range(5):
            session.add(
                JobEvent(
                    job_id=job_id,
                    tenant_id=_tenant(session, job_id),
                    type="metrics",
                    message=f"Step {step}",
                    data={"step": step, "train_loss": 1.0 / (step + 1)},
                )
            )
            session.flush()
        session.commit()
    url = f"/v1/fine_tuning/jobs/{job_id}/events"
    first = client.get(url, params={"limit": 4}, headers=auth(keys.a)).json()
    assert [e["message"] for e in first["data"]] == ["Step 4", "Step 3", "Step 2", "Step 1"]
    assert first["has_more"] is True
    assert first["data"][0]["type"] == "metrics" and first["data"][0]["data"]["step"] == 4
    rest = client.get(
        url, params={"limit": 4, "after": first["last_id"]}, headers=auth(keys.a)
    ).json()
    assert [e["message"] for e in rest["data"]] == ["Step 0", f"Created fine-tuning job: {job_id}"]
    assert rest["has_more"] is False


def _tenant(session: Session, job_id: str) -> str:
    return str(session.scalar(select(Job.tenant_id).where(Job.id == job_id)))


def test_checkpoints_paginate(
    client: TestClient, keys: Keys, job_id: str, session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        tenant = _tenant(session, job_id)
        for step in (10, 20, 30):
            session.add(
                Checkpoint(
                    job_id=job_id,
                    tenant_id=tenant,
                    step_number=step,
                    metrics={"train_loss": 0.5, "valid_loss": 0.6},
                    storage_key=f"jobs/{job_id}/step-{step}",
                    fine_tuned_model_checkpoint=f"ft:{BASE_MODEL}:alpha::{job_id}:ckpt-step-{step}",
                    train_loss=0.5,
                )
            )
            session.flush()
        session.commit()
    url = f"/v1/fine_tuning/jobs/{job_id}/checkpoints"
    first = client.get(url, params={"limit": 2}, headers=auth(keys.a)).json()
    assert [c["step_number"] for c in first["data"]] == [30, 20]
    assert first["has_more"] is True
    ckpt = first["data"][0]
    assert ckpt["object"] == "fine_tuning.job.checkpoint"
    assert ckpt["fine_tuning_job_id"] == job_id
    assert ckpt["metrics"] == {"step": 30, "train_loss": 0.5, "valid_loss": 0.6}
    assert ckpt["fine_tuned_model_checkpoint"].endswith("ckpt-step-30")
    assert ckpt["safety"] is None and ckpt["deployable"] is None  # not evaluated yet
    rest = client.get(url, params={"after": first["last_id"]}, headers=auth(keys.a)).json()
    assert [c["step_number"] for c in rest["data"]] == [10] and rest["has_more"] is False
    assert client.get(url, params={"after": "ftckpt-nope"}, headers=auth(keys.a)).status_code == 400
