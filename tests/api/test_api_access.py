"""Authentication, tenant isolation on every route, and the admin routes (deny by default)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from core.jobs import JobStatus
from core.models import Checkpoint, Job, JobEvent
from tests.api.helpers import BASE_MODEL, Keys, auth, chat_jsonl, create_job, upload

PUBLIC = {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def protected_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app documents except the public ones, with ids filled in."""
    out: list[tuple[str, str]] = []
    for path, operations in app.openapi()["paths"].items():
        if path in PUBLIC:
            continue
        path = (
            path.replace("{file_id}", "file-x")
            .replace("{fine_tuning_job_id}", "ftjob-x")
            .replace("{checkpoint_id}", "ftckpt-x")
            .replace("{alignment_id}", "ftjob-x")
            .replace("{tenant_name}", "alpha")
            .replace("{model_id}", BASE_MODEL)
            .replace("{key_id}", "key-x")
        )
        out.extend((method.upper(), path) for method in sorted(operations))
    return out


def test_every_route_needs_a_key(app: FastAPI, client: TestClient) -> None:
    routes = protected_routes(app)
    assert len(routes) == 42  # worker +1, dashadm +11, quotas +2 (usage)
    for method, path in routes:
        for headers in (
            {},
            {"Authorization": "Bearer sk-ftaas-wrong"},
            {"Authorization": "Basic abc"},
        ):
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            error = response.json()["error"]
            assert error["code"] == "invalid_api_key", (method, path)
            assert error["type"] == "invalid_request_error"
            assert response.headers["www-authenticate"] == "Bearer"


def test_revoked_key_is_refused(
    client: TestClient, keys: Keys, session_factory: sessionmaker[Session]
) -> None:
    import time

    from api.authcache import KeyCache
    from core.models import ApiKey

    ttl = 0.5
    client.app.state.key_cache = KeyCache(ttl_s=ttl)  # type: ignore[attr-defined]
    assert client.get("/v1/files", headers=auth(keys.b)).status_code == 200
    with session_factory() as session:
        session.execute(update(ApiKey).values(revoked_at=1))
        session.commit()
    # Documented: an API process may accept a revoked key for up to FTAAS_AUTH_CACHE_TTL_S.
    assert client.get("/v1/files", headers=auth(keys.b)).status_code == 200
    time.sleep(ttl + 0.1)
    assert client.get("/v1/files", headers=auth(keys.b)).status_code == 401
    assert client.get("/v1/files", headers=auth(keys.a)).status_code == 401  # never cached


def test_healthz_needs_no_key(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok", "database": "ok"}


@pytest.fixture
def tenant_a_objects(
    client: TestClient, keys: Keys, session_factory: sessionmaker[Session]
) -> dict[str, str]:
    """A file, a job with an event and a checkpoint, and a succeeded job's model, all tenant A's."""
    file_id = upload(client, keys.a, chat_jsonl(12)).json()["id"]
    job = create_job(client, keys.a, file_id).json()
    done = create_job(client, keys.a, file_id, seed=99).json()
    ft_model = f"ft:{BASE_MODEL}:alpha:x:{done['id']}"
    with session_factory() as session:
        session.execute(
            update(Job)
            .where(Job.id == done["id"])
            .values(status=JobStatus.SUCCEEDED, fine_tuned_model=ft_model, finished_at=10)
        )
        event = JobEvent(job_id=job["id"], tenant_id=job["organization_id"], message="hi")
        ckpt = Checkpoint(
            job_id=job["id"],
            tenant_id=job["organization_id"],
            step_number=1,
            storage_key="k",
            fine_tuned_model_checkpoint="ft:x:ckpt-1",
            safety={"harmful_score": 0.0},
            deployable=True,
        )
        session.add_all([event, ckpt])
        session.commit()
        ids = {"event": event.id, "checkpoint": ckpt.id}
    return {"file": file_id, "job": job["id"], "model": ft_model, **ids}


def test_other_tenant_gets_404_on_every_route(
    app: FastAPI, client: TestClient, keys: Keys, tenant_a_objects: dict[str, str]
) -> None:
    f, j, m = tenant_a_objects["file"], tenant_a_objects["job"], tenant_a_objects["model"]
    attempts = [
        ("GET", f"/v1/files/{f}"),
        ("DELETE", f"/v1/files/{f}"),
        ("GET", f"/v1/files/{f}/content"),
        ("GET", f"/v1/fine_tuning/jobs/{j}"),
        ("POST", f"/v1/fine_tuning/jobs/{j}/cancel"),
        ("POST", f"/v1/fine_tuning/jobs/{j}/pause"),
        ("POST", f"/v1/fine_tuning/jobs/{j}/resume"),
        ("GET", f"/v1/fine_tuning/jobs/{j}/events"),
        ("GET", f"/v1/fine_tuning/jobs/{j}/checkpoints"),
        ("GET", f"/v1/models/{m}"),
        ("GET", f"/v1/files/{f}/safety_report"),
        ("GET", f"/v1/fine_tuning/jobs/{j}/checkpoints/{tenant_a_objects['checkpoint']}/adapter"),
    ]
    # Every user route that takes an object id is covered.
    with_ids = {(meth, p) for meth, p in protected_routes(app) if "-x" in p and p.startswith("/v1")}
    assert len(with_ids) == len(attempts) - 1  # /v1/models/{id} is listed with a base model
    for method, path in attempts:
        response = client.request(method, path, headers=auth(keys.b))
        assert response.status_code == 404, (method, path, response.text)
        # Indistinguishable from an id that never existed: nothing about the object leaks.
        real = next(v for v in (f, j, m) if v in path)
        ghost = client.request(method, path.replace(real, real[:-4] + "zzzz"), headers=auth(keys.b))
        assert ghost.status_code == 404
        assert response.text.replace(real, "?") == ghost.text.replace(real[:-4] + "zzzz", "?")
    # ...and the owner still sees everything, untouched.
    for method, path in attempts[:1] + attempts[3:4] + attempts[7:11]:
        assert client.request(method, path, headers=auth(keys.a)).status_code == 200, path
    assert (
        client.get(f"/v1/fine_tuning/jobs/{j}", headers=auth(keys.a)).json()["status"] == "queued"
    )


def test_other_tenant_sees_nothing_in_lists_or_cursors(
    client: TestClient, keys: Keys, tenant_a_objects: dict[str, str]
) -> None:
    f, j = tenant_a_objects["file"], tenant_a_objects["job"]
    assert client.get("/v1/files", headers=auth(keys.b)).json()["data"] == []
    assert client.get("/v1/fine_tuning/jobs", headers=auth(keys.b)).json()["data"] == []
    models = [m["id"] for m in client.get("/v1/models", headers=auth(keys.b)).json()["data"]]
    assert tenant_a_objects["model"] not in models
    for path, cursor in (("/v1/files", f), ("/v1/fine_tuning/jobs", j)):
        response = client.get(path, params={"after": cursor}, headers=auth(keys.b))
        assert response.status_code == 400 and response.json()["error"]["param"] == "after"
    own_file = upload(client, keys.b, chat_jsonl(10)).json()["id"]
    own_job = create_job(client, keys.b, own_file).json()["id"]
    for kind in ("events", "checkpoints"):
        cursor = tenant_a_objects["event" if kind == "events" else "checkpoint"]
        response = client.get(
            f"/v1/fine_tuning/jobs/{own_job}/{kind}", params={"after": cursor}, headers=auth(keys.b)
        )
        assert response.status_code == 400, kind


def test_other_tenants_file_cannot_be_trained_on(
    client: TestClient, keys: Keys, tenant_a_objects: dict[str, str]
) -> None:
    for field in ("training_file", "validation_file"):
        own = upload(client, keys.b, chat_jsonl(11)).json()["id"]
        body = {"training_file": own, field: tenant_a_objects["file"]}
        response = client.post(
            "/v1/fine_tuning/jobs", headers=auth(keys.b), json={"model": BASE_MODEL, **body}
        )
        assert response.status_code == 400
        assert response.json()["error"]["param"] == field
        assert response.json()["error"]["message"] == f"File {tenant_a_objects['file']} not found."


def test_models_list(client: TestClient, keys: Keys, tenant_a_objects: dict[str, str]) -> None:
    listing = client.get("/v1/models", headers=auth(keys.a)).json()
    assert listing["object"] == "list"
    by_id = {m["id"]: m for m in listing["data"]}
    assert set(by_id) == {
        BASE_MODEL,
        "pending-model",
        tenant_a_objects["model"],
    }  # not broken-model
    assert by_id[BASE_MODEL]["object"] == "model" and by_id[BASE_MODEL]["status"] == "ready"
    assert by_id["pending-model"]["status"] == "pending"
    assert by_id[tenant_a_objects["model"]]["kind"] == "fine-tuned"
    assert by_id[tenant_a_objects["model"]]["owned_by"].startswith("org-")
    one = client.get(f"/v1/models/{tenant_a_objects['model']}", headers=auth(keys.a))
    assert one.status_code == 200 and one.json()["id"] == tenant_a_objects["model"]
    assert client.get("/v1/models/broken-model", headers=auth(keys.a)).status_code == 404


ADMIN_ROUTES = [
    ("POST", "/admin/models"),
    ("GET", "/admin/models"),
    ("GET", f"/admin/models/{BASE_MODEL}"),
    ("PATCH", f"/admin/models/{BASE_MODEL}"),
    ("GET", "/admin/tenants"),
    ("PATCH", "/admin/tenants/alpha"),
    ("GET", "/admin/tenants/alpha/usage"),
    ("POST", "/admin/alignments"),
    ("GET", "/admin/alignments"),
    ("GET", "/admin/alignments/ftjob-x"),
    ("GET", "/admin/jobs"),
    ("GET", "/admin/fine_tuning/jobs/ftjob-x/flagged_lines"),
    ("GET", "/admin/fine_tuning/jobs/ftjob-x/checkpoints"),
    ("POST", "/admin/tenants"),
    ("POST", "/admin/tenants/alpha/suspend"),
    ("POST", "/admin/tenants/alpha/unsuspend"),
    ("GET", "/admin/tenants/alpha/keys"),
    ("POST", "/admin/tenants/alpha/keys"),
    ("POST", "/admin/keys/key-x/revoke"),
    ("GET", "/admin/workers"),
    ("GET", "/admin/audit"),
    ("POST", "/admin/fine_tuning/jobs/ftjob-x/cancel"),
    ("POST", "/admin/fine_tuning/jobs/ftjob-x/pause"),
    ("POST", "/admin/fine_tuning/jobs/ftjob-x/resume"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_user_key_on_admin_routes_is_403(
    client: TestClient, keys: Keys, method: str, path: str
) -> None:
    response = client.request(method, path, headers=auth(keys.a), json={"id": "m", "path": "/"})
    assert response.status_code == 403
    assert response.json()["error"] == {
        "message": "This route needs an admin API key.",
        "type": "permission_error",
        "param": None,
        "code": "insufficient_permissions",
    }


def test_every_admin_route_is_covered(app: FastAPI) -> None:
    admin = [(m, p) for m, p in protected_routes(app) if p.startswith("/admin")]
    assert sorted(admin) == sorted(ADMIN_ROUTES)


def _model_dir(tmp_path: Path, config: str | None = '{"model_type": "gpt2"}') -> Path:
    path = tmp_path / "my-model"
    path.mkdir()
    if config is not None:
        (path / "config.json").write_text(config)
    return path


def test_admin_registers_a_model(client: TestClient, keys: Keys, tmp_path: Path) -> None:
    path = _model_dir(tmp_path)
    response = client.post(
        "/admin/models", headers=auth(keys.admin), json={"id": "org/tiny-gpt2", "path": str(path)}
    )
    assert response.status_code == 201, response.text
    assert response.json()["id"] == "org/tiny-gpt2" and response.json()["status"] == "ready"
    assert client.get("/v1/models/org/tiny-gpt2", headers=auth(keys.a)).status_code == 200
    file_id = upload(client, keys.a, chat_jsonl(10)).json()["id"]
    assert create_job(client, keys.a, file_id, model="org/tiny-gpt2").status_code == 200
    again = client.post(
        "/admin/models", headers=auth(keys.admin), json={"id": "org/tiny-gpt2", "path": str(path)}
    )
    assert again.status_code == 409 and again.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(
    ("config", "model_id", "param"),
    [
        (None, "m1", "path"),
        ("not json", "m1", "path"),
        ("[1]", "m1", "path"),
        ('{"model_type": "gpt2"}', "ft:sneaky", "id"),
        ('{"model_type": "gpt2"}', "has space", "id"),
    ],
)
def test_admin_model_registration_is_validated(
    client: TestClient,
    keys: Keys,
    tmp_path: Path,
    config: str | None,
    model_id: str,
    param: str,
) -> None:
    path = _model_dir(tmp_path, config)
    response = client.post(
        "/admin/models", headers=auth(keys.admin), json={"id": model_id, "path": str(path)}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    for odd in ("relative/dir", "/tmp/\x00x", str(path) + "/" + "x" * 5000):
        response = client.post(
            "/admin/models", headers=auth(keys.admin), json={"id": "m2", "path": odd}
        )
        assert response.status_code == 400 and response.json()["error"]["param"] == "path"


def test_admin_lists_every_tenants_jobs(
    client: TestClient, keys: Keys, session_factory: sessionmaker[Session]
) -> None:
    a_file = upload(client, keys.a, chat_jsonl(10)).json()["id"]
    b_file = upload(client, keys.b, chat_jsonl(10)).json()["id"]
    a1 = create_job(client, keys.a, a_file).json()
    b1 = create_job(client, keys.b, b_file).json()
    a2 = create_job(client, keys.a, a_file, seed=5).json()
    client.post(f"/v1/fine_tuning/jobs/{a1['id']}/cancel", headers=auth(keys.a))
    page = client.get("/admin/jobs", params={"limit": 2}, headers=auth(keys.admin)).json()
    assert [j["id"] for j in page["data"]] == [a2["id"], b1["id"]] and page["has_more"]
    rest = client.get(
        "/admin/jobs", params={"after": page["last_id"]}, headers=auth(keys.admin)
    ).json()
    assert [j["id"] for j in rest["data"]] == [a1["id"]] and not rest["has_more"]
    cancelled = client.get(
        "/admin/jobs", params={"status": "cancelled"}, headers=auth(keys.admin)
    ).json()
    assert [j["id"] for j in cancelled["data"]] == [a1["id"]]
    only_b = client.get(
        "/admin/jobs", params={"organization_id": b1["organization_id"]}, headers=auth(keys.admin)
    ).json()
    assert [j["id"] for j in only_b["data"]] == [b1["id"]]
    bad = client.get("/admin/jobs", params={"status": "nope"}, headers=auth(keys.admin))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"
    # The admin key's own tenant sees none of these through /v1.
    assert client.get("/v1/fine_tuning/jobs", headers=auth(keys.admin)).json()["data"] == []
    assert json.dumps(page)  # plain JSON throughout
