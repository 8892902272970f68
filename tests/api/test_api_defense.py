"""The defended-jobs API (docs/defended-jobs.md): alignments, model and tenant policy, the defense
recorded on every job, checkpoint safety and the gated adapter download, upload screening and
flagged lines. Rows the worker would write are inserted directly."""

from __future__ import annotations

import io
import os
import tarfile
import typing
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from api.admin.schemas import ALIGNMENT_RANGES, AlignmentCreate, AlignmentHyperparameters
from api.jobs.adapter import AdapterArchive
from api.queue import QueueClient
from core.alignments import resolve_alignment_hyperparameters
from core.config import Settings
from core.models import Checkpoint, File, Job, Model
from core.policy import ALIGNMENT_METHODS
from core.queue import ALIGNMENT_QUEUE, SCREENING_QUEUE
from tests.api.helpers import (
    BASE_MODEL,
    Keys,
    Task,
    auth,
    chat_jsonl,
    chat_line,
    create_job,
    make_app,
    queued_tasks,
    upload,
)

ALIGNED = f"{BASE_MODEL}-antibody"


def add_model(factory: sessionmaker[Session], **values: Any) -> None:
    values = {"source": "aligned", "kind": "aligned", "base_model": BASE_MODEL, **values}
    with factory() as session:
        session.add(Model(**values))
        session.commit()


def get_row(factory: sessionmaker[Session], cls: Any, row_id: str) -> Any:
    with factory() as session:
        return session.scalar(select(cls).where(cls.id == row_id))


def set_row(factory: sessionmaker[Session], cls: Any, row_id: str, **values: Any) -> None:
    with factory() as session:
        session.execute(update(cls).where(cls.id == row_id).values(**values))
        session.commit()


def align(client: TestClient, keys: Keys, **body: Any) -> Any:
    return client.post(
        "/admin/alignments",
        headers=auth(keys.admin),
        json={"base": BASE_MODEL, "method": "antibody", **body},
    )


# -- alignments -----------------------------------------------------------------------------------


def test_admin_aligns_a_base_model(
    client: TestClient, keys: Keys, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    hp = {"steps": 5, "batch_size": 2, "learning_rate": 0.001}
    response = align(client, keys, hyperparameters=hp)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job" and job["kind"] == "alignment"
    assert job["status"] == "queued" and job["model"] == BASE_MODEL
    assert job["defense"] == "antibody"
    assert {k: job["defense_params"][k] for k in hp} == hp
    # Owned by the admin key's tenant: its own /v1 routes show it.
    mine = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth(keys.admin))
    assert mine.status_code == 200 and mine.json()["kind"] == "alignment"
    assert Task("ftaas.jobs.run", [job["id"]]) in queued_tasks(settings, ALIGNMENT_QUEUE)
    # The aligned model is listed as pending, with its lineage.
    model = client.get(f"/v1/models/{ALIGNED}", headers=auth(keys.a)).json()
    assert model["kind"] == "aligned" and model["status"] == "pending"
    assert model["base_model"] == BASE_MODEL and model["method"] == "antibody"
    assert get_row(session_factory, Model, ALIGNED).alignment_job_id == job["id"]

    listing = client.get("/admin/alignments", headers=auth(keys.admin)).json()
    assert [a["id"] for a in listing["data"]] == [job["id"]]
    one = client.get(f"/admin/alignments/{job['id']}", headers=auth(keys.admin))
    assert one.status_code == 200 and one.json()["id"] == job["id"]

    # The same request while it is unfinished returns it; a different one is a conflict.
    again = align(client, keys, hyperparameters=hp)
    assert again.json()["id"] == job["id"] and again.headers["idempotent-replayed"] == "true"
    other = align(client, keys, hyperparameters={"steps": 6})
    assert other.status_code == 409 and other.headers["x-should-retry"] == "false"
    assert other.json()["error"]["code"] == "alignment_in_progress"
    queued = queued_tasks(settings, ALIGNMENT_QUEUE)
    assert len([t for t in queued if t.name == "ftaas.jobs.run"]) == 1


def test_cancelled_alignment_is_no_longer_waited_for(
    client: TestClient, keys: Keys, training_file: str, session_factory: sessionmaker[Session]
) -> None:
    job = align(client, keys).json()
    waiting = create_job(client, keys.a, training_file).json()
    assert waiting["served_model"] == ALIGNED and waiting["status"] == "queued"
    # A user cannot see or cancel the provider's alignment.
    assert (
        client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=auth(keys.a)).status_code
        == 404
    )
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=auth(keys.admin))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert get_row(session_factory, Model, ALIGNED).status == "error"
    ids = [m["id"] for m in client.get("/v1/models", headers=auth(keys.a)).json()["data"]]
    assert ALIGNED not in ids
    # New jobs train the base again; a new alignment brings the model back as pending.
    assert create_job(client, keys.a, training_file, seed=3).json()["served_model"] == BASE_MODEL
    second = align(client, keys).json()
    assert second["id"] != job["id"]
    assert client.get(f"/v1/models/{ALIGNED}", headers=auth(keys.a)).json()["status"] == "pending"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"base": "no-such-model"}, "base", "model_not_found"),
        ({"base": "broken-model"}, "base", "model_not_found"),
        ({"base": "x" * 200}, "base", "invalid_value"),
        ({"method": "lisa"}, "method", "invalid_method"),
        ({"method": None}, "method", "invalid_method"),
        ({"hyperparameters": {"steps": 0}}, "hyperparameters.steps", "invalid_hyperparameter"),
        ({"hyperparameters": {"steps": 2.5}}, "hyperparameters.steps", "invalid_hyperparameter"),
        ({"hyperparameters": {"steps": "3"}}, "hyperparameters.steps", "invalid_hyperparameter"),
        ({"hyperparameters": {"steps": True}}, "hyperparameters.steps", "invalid_hyperparameter"),
        (
            {"hyperparameters": {"batch_size": 257}},
            "hyperparameters.batch_size",
            "invalid_hyperparameter",
        ),
        (
            {"hyperparameters": {"learning_rate": 0}},
            "hyperparameters.learning_rate",
            "invalid_hyperparameter",
        ),
        ({"hyperparameters": {"ema": 1.0}}, "hyperparameters.ema", "invalid_hyperparameter"),
        ({"hyperparameters": {"rho": -0.1}}, "hyperparameters.rho", "invalid_hyperparameter"),
        (
            {"hyperparameters": {"lambda_form": "sine"}},
            "hyperparameters.lambda_form",
            "invalid_hyperparameter",
        ),
        ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup", "unknown_parameter"),
        ({"hyperparameters": [1]}, "hyperparameters", "invalid_value"),
        ({"colour": "red"}, "colour", "unknown_parameter"),
    ],
)
def test_alignment_validation_names_the_param(
    client: TestClient, keys: Keys, body: dict[str, Any], param: str, code: str
) -> None:
    response = align(client, keys, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    assert error["message"]


def test_only_base_models_are_aligned(
    client: TestClient, keys: Keys, session_factory: sessionmaker[Session]
) -> None:
    add_model(session_factory, id=ALIGNED, method="antibody", status="ready")
    response = align(client, keys, base=ALIGNED)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_base_model"
    # A base model squatting on the aligned name is never turned into an aligned one.
    with session_factory() as session:
        session.add(Model(id=f"{BASE_MODEL}-booster", source="local", status="ready"))
        session.commit()
    taken = align(client, keys, method="booster")
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "model_exists"
    missing = client.get("/admin/alignments/ftjob-nope", headers=auth(keys.admin))
    assert missing.status_code == 404


def test_alignment_schema_matches_the_shared_helper(settings: Settings) -> None:
    """Every knob the API accepts is one core.alignments (and so the worker) knows."""
    methods = typing.get_args(AlignmentCreate.model_fields["method"].annotation)
    assert set(methods) == set(ALIGNMENT_METHODS)
    for name, field in AlignmentHyperparameters.model_fields.items():
        spec = ALIGNMENT_RANGES.get(name)
        if spec is None:
            value: Any = typing.get_args(typing.get_args(field.annotation)[0])[0]
        elif spec.integer:
            value = int(spec.low) + (1 if spec.low_open else 0)
        else:
            value = (spec.low + spec.high) / 2
        resolved = resolve_alignment_hyperparameters({name: value}, settings=settings)
        assert resolved[name] == value, name


# -- policies -------------------------------------------------------------------------------------


def patch_model(client: TestClient, keys: Keys, policy: Any, model: str = BASE_MODEL) -> Any:
    return client.patch(f"/admin/models/{model}", headers=auth(keys.admin), json={"policy": policy})


def test_model_policy_is_patched(
    client: TestClient, keys: Keys, session_factory: sessionmaker[Session]
) -> None:
    add_model(session_factory, id=ALIGNED, method="antibody", status="pending")
    response = patch_model(client, keys, {"defense": "lisa", "tau": 0.5})
    assert response.status_code == 200, response.text
    assert response.json()["policy"] == {"defense": "lisa", "tau": 0.5}
    both = patch_model(client, keys, {"serve": ALIGNED, "defense": "sft", "allow_sft": True})
    assert both.json()["policy"] == {
        "defense": "sft",
        "tau": 0.5,
        "serve": ALIGNED,
        "allow_sft": True,
    }
    removed = patch_model(client, keys, {"tau": None, "serve": None}).json()["policy"]
    assert removed == {"defense": "sft", "allow_sft": True}
    listing = client.get("/admin/models", headers=auth(keys.admin)).json()["data"]
    by_id = {m["id"]: m for m in listing}
    assert by_id[BASE_MODEL]["policy"] == removed
    assert by_id["broken-model"]["status"] == "error"  # admins see every model
    assert by_id[ALIGNED]["kind"] == "aligned" and by_id[ALIGNED]["source"] == "aligned"
    # Ids with a slash (registered Hugging Face names) work as path parameters.
    add_model(session_factory, id="org/tiny", kind="base", source="local", base_model=None)
    assert patch_model(client, keys, {"tau": 2}, model="org/tiny").json()["policy"] == {"tau": 2}
    missing = patch_model(client, keys, {"tau": 1}, model="no-such-model")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("policy", "param", "code"),
    [
        ({"serve": "no-such-model"}, "policy.serve", "invalid_policy"),
        ({"serve": "broken-model"}, "policy.serve", "invalid_policy"),
        ({"serve": 3}, "policy.serve", "invalid_policy"),
        ({"defense": "none"}, "policy.defense", "invalid_policy"),
        ({"defense": "sft"}, "policy.defense", "invalid_policy"),  # without allow_sft
        ({"allow_sft": "yes"}, "policy.allow_sft", "invalid_policy"),
        ({"allow_sft": 1}, "policy.allow_sft", "invalid_policy"),
        ({"tau": 0}, "policy.tau", "invalid_policy"),
        ({"tau": -1.0}, "policy.tau", "invalid_policy"),
        ({"tau": "1"}, "policy.tau", "invalid_policy"),
        ({"tau": True}, "policy.tau", "invalid_policy"),
        ({"tau": 1e9}, "policy.tau", "invalid_policy"),
        ({"safety_gate_margin": 0.1}, "policy.safety_gate_margin", "unknown_parameter"),
        ([], "policy", "invalid_value"),
    ],
)
def test_model_policy_validation(
    client: TestClient, keys: Keys, policy: Any, param: str, code: str
) -> None:
    response = patch_model(client, keys, policy)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    unchanged = client.get("/admin/models", headers=auth(keys.admin)).json()["data"]
    assert all(m["policy"] == {} for m in unchanged)


def test_tenant_policy(client: TestClient, keys: Keys) -> None:
    response = client.patch(
        "/admin/tenants/alpha",
        headers=auth(keys.admin),
        json={"policy": {"safety_gate_margin": 0.05}},
    )
    assert response.status_code == 200, response.text
    tenant = response.json()
    assert tenant["name"] == "alpha" and tenant["policy"] == {"safety_gate_margin": 0.05}
    assert tenant["id"].startswith("org-")
    page = client.get("/admin/tenants", params={"limit": 2}, headers=auth(keys.admin)).json()
    assert [t["name"] for t in page["data"]] == ["alpha", "beta"] and page["has_more"]
    rest = client.get(
        "/admin/tenants", params={"after": page["last_id"]}, headers=auth(keys.admin)
    ).json()
    assert [t["name"] for t in rest["data"]] == ["provider"] and not rest["has_more"]
    assert page["data"][0]["policy"] == {"safety_gate_margin": 0.05}
    for bad in (-0.1, 1.5, "0.1", True):
        response = client.patch(
            "/admin/tenants/alpha",
            headers=auth(keys.admin),
            json={"policy": {"safety_gate_margin": bad}},
        )
        assert response.status_code == 400, bad
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("policy.safety_gate_margin", "invalid_policy")
    unknown = client.patch(
        "/admin/tenants/alpha", headers=auth(keys.admin), json={"policy": {"tau": 1}}
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_parameter"
    cleared = client.patch(
        "/admin/tenants/alpha",
        headers=auth(keys.admin),
        json={"policy": {"safety_gate_margin": None}},
    )
    assert cleared.json()["policy"] == {}
    nobody = client.patch("/admin/tenants/nobody", headers=auth(keys.admin), json={"policy": {}})
    assert nobody.status_code == 404


# -- the defense every job records ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "defense", "params"),
    [
        ({}, "antibody", {"tau": 1.0}),  # FTAAS_ANTIBODY_TAU's default
        ({"tau": 0.5}, "antibody", {"tau": 0.5}),
        ({"defense": "lisa"}, "lisa", {}),
        ({"defense": "sft"}, "antibody", {"tau": 1.0}),  # sft without allow_sft: refused
        ({"defense": "sft", "allow_sft": True}, "sft", {}),
    ],
)
def test_job_records_the_policy_defense(
    client: TestClient,
    keys: Keys,
    training_file: str,
    session_factory: sessionmaker[Session],
    policy: dict[str, Any],
    defense: str,
    params: dict[str, Any],
) -> None:
    set_row(session_factory, Model, BASE_MODEL, policy=policy)
    job = create_job(client, keys.a, training_file).json()
    assert (job["defense"], job["defense_params"]) == (defense, params)
    row = get_row(session_factory, Job, job["id"])
    assert (row.defense, row.defense_params, row.served_model) == (defense, params, BASE_MODEL)


def test_provider_default_defense_comes_from_settings(
    settings: Settings, keys: Keys, training_file: str
) -> None:
    with TestClient(make_app(settings, defense="lisa")) as client:
        assert create_job(client, keys.a, training_file).json()["defense"] == "lisa"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"defense": "sft"}, "defense"),
        ({"defense_params": {"tau": 100}}, "defense_params"),
        ({"served_model": BASE_MODEL}, "served_model"),
        ({"method": {"type": "supervised", "defense": "sft"}}, "method.defense"),
        (
            {"method": {"type": "supervised", "supervised": {"defense": None}}},
            "method.supervised.defense",
        ),
        ({"hyperparameters": {"tau": 1e6}}, "hyperparameters.tau"),
    ],
)
def test_users_cannot_switch_the_defense_off(
    client: TestClient, keys: Keys, training_file: str, body: dict[str, Any], param: str
) -> None:
    response = create_job(client, keys.a, training_file, **body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["code"] == "unknown_parameter"


def test_served_model_resolution(
    settings: Settings,
    client: TestClient,
    keys: Keys,
    training_file: str,
    session_factory: sessionmaker[Session],
) -> None:
    # A pending aligned model: the job records it and waits in the queue.
    add_model(session_factory, id=ALIGNED, method="antibody", status="pending")
    job = create_job(client, keys.a, training_file, seed=1).json()
    assert job["served_model"] == ALIGNED and job["status"] == "queued"
    assert job["model"] == BASE_MODEL
    # Once ready it serves the base, and its own policy decides the defense.
    set_row(session_factory, Model, ALIGNED, status="ready", policy={"tau": 0.5})
    job = create_job(client, keys.a, training_file, seed=2).json()
    assert job["served_model"] == ALIGNED and job["defense_params"] == {"tau": 0.5}
    # An aligned model can be named directly.
    job = create_job(client, keys.a, training_file, model=ALIGNED).json()
    assert job["model"] == ALIGNED and job["served_model"] == ALIGNED
    # The base's policy can point elsewhere.
    add_model(session_factory, id="custom-aligned", method="sft", status="ready")
    set_row(session_factory, Model, BASE_MODEL, policy={"serve": "custom-aligned"})
    job = create_job(client, keys.a, training_file, seed=3).json()
    assert job["served_model"] == "custom-aligned"
    # With serve_aligned off, the base itself is trained (still defended).
    set_row(session_factory, Model, BASE_MODEL, policy={})
    with TestClient(make_app(settings, serve_aligned=False)) as other:
        job = create_job(other, keys.a, training_file, seed=4).json()
    assert job["served_model"] == BASE_MODEL and job["defense"] == "antibody"


def test_models_show_aligned_models(
    client: TestClient, keys: Keys, session_factory: sessionmaker[Session]
) -> None:
    lineage = {"base": BASE_MODEL, "method": "antibody", "seed": 0}
    safety = {"harmful_score": 0.05, "over_refusal": 0.1}
    add_model(
        session_factory,
        id=ALIGNED,
        method="antibody",
        status="ready",
        lineage=lineage,
        safety=safety,
        adapter_path="/x",
    )
    add_model(session_factory, id=f"{BASE_MODEL}-sft", method="sft", status="error")
    listing = client.get("/v1/models", headers=auth(keys.a)).json()["data"]
    by_id = {m["id"]: m for m in listing}
    assert f"{BASE_MODEL}-sft" not in by_id
    expected = {"kind": "aligned", "base_model": BASE_MODEL, "method": "antibody"}
    assert {k: by_id[ALIGNED][k] for k in expected} == expected
    assert by_id[ALIGNED]["lineage"] == lineage and by_id[ALIGNED]["safety"] == safety
    assert by_id[ALIGNED]["status"] == "ready"
    assert by_id[BASE_MODEL]["kind"] == "base" and by_id[BASE_MODEL]["base_model"] is None
    one = client.get(f"/v1/models/{ALIGNED}", headers=auth(keys.a)).json()
    assert one == by_id[ALIGNED]
    assert "adapter_path" not in one and "policy" not in one  # provider details stay in /admin


# -- checkpoints, the gate and the adapter download -----------------------------------------------


def adapter_dir(settings: Settings, job_id: str, step: int) -> tuple[str, dict[str, bytes]]:
    key = f"jobs/{job_id}/checkpoints/step-{step}/adapter"
    files = {
        "adapter_config.json": b'{"peft_type": "LORA", "r": 8}',
        "adapter_model.safetensors": os.urandom(150_000),  # several chunks
    }
    root = settings.resolved_artifacts_dir / key
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return key, files


def add_checkpoint(
    factory: sessionmaker[Session], job_id: str, step: int, key: str = "k", **values: Any
) -> str:
    with factory() as session:
        tenant = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
        row = Checkpoint(
            job_id=job_id,
            tenant_id=tenant,
            step_number=step,
            storage_key=key,
            fine_tuned_model_checkpoint=f"ft:{BASE_MODEL}:alpha::{job_id}:ckpt-step-{step}",
            **values,
        )
        session.add(row)
        session.commit()
        return row.id


SAFE = {"harmful_score": 0.05, "start_harmful_score": 0.04, "over_refusal": 0.1, "margin": 0.1}
UNSAFE = {"harmful_score": 0.4, "start_harmful_score": 0.04, "over_refusal": 0.0, "margin": 0.1}


def test_checkpoints_show_safety_and_the_gate(
    client: TestClient, keys: Keys, job_id: str, session_factory: sessionmaker[Session]
) -> None:
    add_checkpoint(session_factory, job_id, 2)
    add_checkpoint(session_factory, job_id, 4, safety=SAFE, deployable=True)
    add_checkpoint(session_factory, job_id, 6, safety=UNSAFE, deployable=False)
    url = f"/v1/fine_tuning/jobs/{job_id}/checkpoints"
    data = client.get(url, headers=auth(keys.a)).json()["data"]
    assert [(c["step_number"], c["deployable"]) for c in data] == [(6, False), (4, True), (2, None)]
    assert data[0]["safety"] == UNSAFE and data[2]["safety"] is None
    # Admins see any tenant's checkpoints, all of them.
    admin = client.get(f"/admin/fine_tuning/jobs/{job_id}/checkpoints", headers=auth(keys.admin))
    assert admin.status_code == 200 and admin.json()["data"] == data
    paged = client.get(
        f"/admin/fine_tuning/jobs/{job_id}/checkpoints",
        params={"limit": 1, "after": data[0]["id"]},
        headers=auth(keys.admin),
    ).json()
    assert [c["step_number"] for c in paged["data"]] == [4] and paged["has_more"]
    assert client.get(url.replace("/v1", "/admin"), headers=auth(keys.a)).status_code == 403
    missing = client.get("/admin/fine_tuning/jobs/ftjob-nope/checkpoints", headers=auth(keys.admin))
    assert missing.status_code == 404
    # The job's own safety summary appears once the worker records it.
    summary = {"start": {"harmful_score": 0.04}, "final": SAFE, "deployable": True}
    set_row(session_factory, Job, job_id, safety=summary)
    assert (
        client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=auth(keys.a)).json()["safety"]
        == summary
    )


def test_adapter_download(
    client: TestClient,
    keys: Keys,
    job_id: str,
    training_file: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    key, files = adapter_dir(settings, job_id, 4)
    # Nothing outside the adapter directory can ride along.
    os.symlink("/etc/hostname", settings.resolved_artifacts_dir / key / "escape")
    ckpt = add_checkpoint(session_factory, job_id, 4, key, safety=SAFE, deployable=True)
    url = f"/v1/fine_tuning/jobs/{job_id}/checkpoints/{ckpt}/adapter"
    response = client.get(url, headers=auth(keys.a))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-tar"
    assert response.headers["content-disposition"] == f'attachment; filename="{ckpt}.tar"'
    assert int(response.headers["content-length"]) == len(response.content)
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        members = tar.getmembers()
        assert sorted(m.name for m in members) == sorted(files)
        assert all(m.isfile() for m in members)
        for member in members:
            extracted = tar.extractfile(member)
            assert extracted is not None and extracted.read() == files[member.name]

    # Another tenant: not found, like a checkpoint that never existed.
    other = client.get(url, headers=auth(keys.b))
    assert other.status_code == 404
    # A checkpoint id under another of the owner's jobs is not found either.
    second = create_job(client, keys.a, training_file, seed=9).json()["id"]
    wrong = client.get(url.replace(job_id, second), headers=auth(keys.a))
    assert wrong.status_code == 404 and wrong.json()["error"]["param"] == "checkpoint_id"
    # Pruned from the store since: 404, not a 500.
    gone = add_checkpoint(session_factory, job_id, 8, "jobs/x/gone", safety=SAFE, deployable=True)
    response = client.get(url.replace(ckpt, gone), headers=auth(keys.a))
    assert response.status_code == 404 and "no longer stored" in response.json()["error"]["message"]


def test_adapter_download_is_gated(
    client: TestClient,
    keys: Keys,
    job_id: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    key, _ = adapter_dir(settings, job_id, 6)
    blocked = add_checkpoint(session_factory, job_id, 6, key, safety=UNSAFE, deployable=False)
    response = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/checkpoints/{blocked}/adapter", headers=auth(keys.a)
    )
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "safety_gate" and error["type"] == "permission_error"
    assert '"harmful_score": 0.4' in error["message"]  # the scores are quoted
    pending = add_checkpoint(session_factory, job_id, 2, key)
    response = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/checkpoints/{pending}/adapter", headers=auth(keys.a)
    )
    assert response.status_code == 409 and response.headers["x-should-retry"] == "false"
    assert response.json()["error"]["code"] == "not_evaluated"


@pytest.mark.parametrize("sizes", [[0], [512], [1, 513, 70_000], [10_240 - 512 - 1024]])
def test_adapter_archive_is_a_valid_tar(tmp_path: Path, sizes: list[int]) -> None:
    (tmp_path / "sub").mkdir()
    expected = {}
    for i, size in enumerate(sizes):
        name = f"sub/f{i}.bin" if i % 2 else f"f{i}.bin"
        expected[name] = os.urandom(size)
        (tmp_path / name).write_bytes(expected[name])
    (tmp_path / ".partial.tmp").write_bytes(b"half")  # an interrupted write is never sent
    archive = AdapterArchive(tmp_path, mtime=1_700_000_000)
    data = b"".join(archive)
    assert len(data) == archive.length and len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        assert all(m.mtime == 1_700_000_000 for m in tar.getmembers())
    assert got == expected


# -- upload screening -----------------------------------------------------------------------------


def test_upload_is_queued_for_screening(
    client: TestClient, keys: Keys, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    body = upload(client, keys.a, chat_jsonl(12)).json()
    assert body["safety_status"] == "queued"
    assert Task("ftaas.files.screen", [body["id"]]) in queued_tasks(settings, SCREENING_QUEUE)
    url = f"/v1/files/{body['id']}/safety_report"
    pending = client.get(url, headers=auth(keys.a)).json()
    assert pending == {
        "object": "file.safety_report",
        "file_id": body["id"],
        "status": "queued",
        "model": None,
        "threshold": None,
        "summary": None,
        "flagged": [],
        "error": None,
    }
    report = {
        "model": ALIGNED,
        "threshold": 0.0,
        "summary": {"lines": 12, "flagged": 1, "mean_score": 0.8},
        "flagged": [{"line": 3, "score": -1.5, "reason": "completion far likelier than refusal"}],
    }
    set_row(session_factory, File, body["id"], safety_status="completed", safety_report=report)
    done = client.get(url, headers=auth(keys.a)).json()
    assert done["status"] == "completed" and done["model"] == ALIGNED
    assert done["summary"] == report["summary"] and done["flagged"] == report["flagged"]
    assert (
        client.get(f"/v1/files/{body['id']}", headers=auth(keys.a)).json()["safety_status"]
        == "completed"
    )
    assert client.get(url, headers=auth(keys.b)).status_code == 404
    set_row(
        session_factory, File, body["id"], safety_status="failed", safety_report={"error": "oom"}
    )
    assert client.get(url, headers=auth(keys.a)).json()["error"] == "oom"


def test_invalid_upload_is_not_screened(client: TestClient, keys: Keys, settings: Settings) -> None:
    body = upload(client, keys.a, chat_jsonl(3) + b"{oops\n").json()
    assert body["status"] == "error" and body["safety_status"] is None
    assert not [
        t for t in queued_tasks(settings, SCREENING_QUEUE) if t.name == "ftaas.files.screen"
    ]
    report = client.get(f"/v1/files/{body['id']}/safety_report", headers=auth(keys.a)).json()
    assert report["status"] is None and report["flagged"] == []


def test_screening_send_failure_keeps_the_upload(
    client: TestClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: QueueClient, file_id: str) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(QueueClient, "send_screen_file", broken)
    response = upload(client, keys.a, "\n".join(chat_line(i) for i in range(10)).encode())
    assert response.status_code == 200 and response.json()["safety_status"] == "queued"


# -- flagged lines --------------------------------------------------------------------------------


def test_flagged_lines_are_admin_only(
    client: TestClient, keys: Keys, job_id: str, session_factory: sessionmaker[Session]
) -> None:
    url = f"/admin/fine_tuning/jobs/{job_id}/flagged_lines"
    before = client.get(url, headers=auth(keys.admin)).json()
    assert before == {"object": "list", "job_id": job_id, "computed": False, "data": []}
    flagged = [
        {"line": 7, "weight": 0.01, "relative_weight": 0.05},
        {"line": 2, "weight": 0.1, "relative_weight": 0.4},
    ]
    set_row(session_factory, Job, job_id, flagged_lines=flagged)
    after = client.get(url, headers=auth(keys.admin)).json()
    assert after["computed"] is True and after["data"] == flagged
    for key in (keys.a, keys.b):
        response = client.get(url, headers=auth(key))
        assert response.status_code == 403
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=auth(keys.a)).json()
    assert "flagged_lines" not in job
    missing = client.get(
        "/admin/fine_tuning/jobs/ftjob-nope/flagged_lines", headers=auth(keys.admin)
    )
    assert missing.status_code == 404
