"""The provider-console admin routes: tenant suspension, keys, workers, and the audit log that
every state-changing /admin route writes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core import workers
from core.models import AdminAction, ApiKey, Job, JobEvent, Worker, now
from tests.api.helpers import BASE_MODEL, Keys, auth

STATE_CHANGING = {"POST", "PATCH", "PUT", "DELETE"}


def _actions(session_factory: sessionmaker[Session]) -> list[AdminAction]:
    with session_factory() as session:
        return list(session.scalars(select(AdminAction).order_by(AdminAction.seq)))


def test_suspended_tenant_gets_403_on_v1_until_unsuspended(
    client: TestClient, keys: Keys, session_factory: sessionmaker[Session]
) -> None:
    assert client.get("/v1/files", headers=auth(keys.a)).status_code == 200
    r = client.post("/admin/tenants/alpha/suspend", headers=auth(keys.admin))
    assert r.status_code == 200, r.text
    assert r.json()["suspended_at"] is not None and r.json()["changed"] is True

    for method, path in (
        ("GET", "/v1/files"),
        ("GET", "/v1/fine_tuning/jobs"),
        ("GET", "/v1/models"),
    ):
        refused = client.request(method, path, headers=auth(keys.a))
        assert refused.status_code == 403
        error = refused.json()["error"]
        assert error["code"] == "tenant_suspended" and error["type"] == "permission_error"
        assert "'alpha' is suspended" in error["message"]
    assert client.get("/v1/files", headers=auth(keys.b)).status_code == 200  # others unaffected
    listed = client.get("/admin/tenants", headers=auth(keys.admin)).json()["data"]
    assert [t["name"] for t in listed if t["suspended_at"]] == ["alpha"]

    again = client.post("/admin/tenants/alpha/suspend", headers=auth(keys.admin))
    assert again.status_code == 200 and again.json()["changed"] is False
    back = client.post("/admin/tenants/alpha/unsuspend", headers=auth(keys.admin))
    assert back.status_code == 200 and back.json()["suspended_at"] is None
    assert client.get("/v1/files", headers=auth(keys.a)).status_code == 200
    assert [a.action for a in _actions(session_factory)] == [
        "tenant.suspend",
        "tenant.suspend",
        "tenant.unsuspend",
    ]


def test_suspending_an_admins_tenant_keeps_admin_routes(client: TestClient, keys: Keys) -> None:
    assert (
        client.post("/admin/tenants/provider/suspend", headers=auth(keys.admin)).status_code == 200
    )
    assert client.get("/admin/tenants", headers=auth(keys.admin)).status_code == 200
    assert client.get("/v1/files", headers=auth(keys.admin)).status_code == 403


def test_suspend_can_cancel_queued_jobs(
    client: TestClient, keys: Keys, job_id: str, session_factory: sessionmaker[Session]
) -> None:
    r = client.post(
        "/admin/tenants/alpha/suspend",
        headers=auth(keys.admin),
        json={"cancel_queued_jobs": True},
    )
    assert r.status_code == 200, r.text
    assert r.json()["cancelled_jobs"] == [job_id]
    with session_factory() as session:
        job = session.scalars(select(Job).where(Job.id == job_id)).one()
        assert job.status == "cancelled" and job.finished_at is not None
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id))
        assert any("tenant was suspended" in m for m in messages)
    bad = client.post(
        "/admin/tenants/alpha/suspend", headers=auth(keys.admin), json={"cancel_queued_jobs": "yes"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "cancel_queued_jobs"
    missing = client.post("/admin/tenants/nobody/suspend", headers=auth(keys.admin))
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "tenant_name"


def test_keys_create_list_revoke(
    client: TestClient, keys: Keys, session_factory: sessionmaker[Session]
) -> None:
    created = client.post("/admin/tenants/alpha/keys", headers=auth(keys.admin))
    assert created.status_code == 201, created.text
    body = created.json()
    new_key = body["key"]
    assert body["tenant"] == "alpha" and body["admin"] is False
    assert new_key.startswith(body["prefix"])
    assert client.get("/v1/files", headers=auth(new_key)).status_code == 200

    listed = client.get("/admin/tenants/alpha/keys", headers=auth(keys.admin))
    assert listed.status_code == 200
    assert new_key not in listed.text and "key_hash" not in listed.text
    assert body["id"] in [k["id"] for k in listed.json()["data"]]

    revoked = client.post(f"/admin/keys/{body['id']}/revoke", headers=auth(keys.admin))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert client.get("/v1/files", headers=auth(new_key)).status_code == 401
    assert client.get("/v1/files", headers=auth(keys.a)).status_code == 200  # the other key works
    twice = client.post(f"/admin/keys/{body['id']}/revoke", headers=auth(keys.admin))
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "key_revoked"
    assert client.post("/admin/keys/key-nope/revoke", headers=auth(keys.admin)).status_code == 404
    assert client.post("/admin/tenants/nobody/keys", headers=auth(keys.admin)).status_code == 404

    with session_factory() as session:
        admin_id = session.scalars(select(ApiKey.id).where(ApiKey.is_admin.is_(True))).one()
    last = client.post(f"/admin/keys/{admin_id}/revoke", headers=auth(keys.admin))
    assert last.status_code == 409 and last.json()["error"]["code"] == "last_admin_key"
    audit = _actions(session_factory)
    assert [a.action for a in audit] == ["key.create", "key.revoke"]
    assert new_key not in str([a.detail for a in audit])  # the key itself is never logged


def test_workers_list_shows_liveness(
    client: TestClient, keys: Keys, session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        for name in ("training@a", "training@b", "training@c"):
            reg = workers.Registration(name, "host", 42, ["training"], "cpu", 2**30, "0.1.0")
            workers.register(session, reg, memory_used=2**20)
        workers.set_current_job(session, "training@a", "ftjob-abc")
        session.execute(
            update(Worker).where(Worker.id == "training@b").values(last_seen_at=now() - 600)
        )
        workers.mark_stopped(session, "training@c")
        session.commit()
    r = client.get("/admin/workers", headers=auth(keys.admin))
    assert r.status_code == 200
    by_id = {w["id"]: w for w in r.json()["data"]}
    assert by_id["training@a"]["status"] == "alive"
    assert by_id["training@a"]["current_job_id"] == "ftjob-abc"
    assert by_id["training@a"]["memory_used"] == 2**20
    assert by_id["training@b"]["status"] == "stale"
    assert by_id["training@c"]["status"] == "stopped"


def _model_dir(tmp_path: Path) -> str:
    path = tmp_path / "m"
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "gpt2"}')
    return str(path)


# One successful call per state-changing /admin route, and the audit action it must write.
Call = Callable[[TestClient, Keys, Path, dict[str, Any]], Any]
AUDITED: dict[tuple[str, str], tuple[str, Call]] = {
    ("POST", "/admin/models"): (
        "model.register",
        lambda c, k, t, _: c.post(
            "/admin/models", headers=auth(k.admin), json={"id": "mine", "path": _model_dir(t)}
        ),
    ),
    ("PATCH", "/admin/models/{model_id}"): (
        "model.policy",
        lambda c, k, t, _: c.patch(
            f"/admin/models/{BASE_MODEL}", headers=auth(k.admin), json={"policy": {"tau": 0.5}}
        ),
    ),
    ("PATCH", "/admin/tenants/{tenant_name}"): (
        "tenant.policy",
        lambda c, k, t, _: c.patch(
            "/admin/tenants/alpha",
            headers=auth(k.admin),
            json={"policy": {"safety_gate_margin": 0.1}},
        ),
    ),
    ("POST", "/admin/alignments"): (
        "alignment.create",
        lambda c, k, t, _: c.post(
            "/admin/alignments",
            headers=auth(k.admin),
            json={"base": BASE_MODEL, "method": "antibody"},
        ),
    ),
    ("POST", "/admin/tenants"): (
        "tenant.create",
        lambda c, k, t, _: c.post("/admin/tenants", headers=auth(k.admin), json={"name": "gamma"}),
    ),
    ("POST", "/admin/tenants/{tenant_name}/suspend"): (
        "tenant.suspend",
        lambda c, k, t, _: c.post("/admin/tenants/beta/suspend", headers=auth(k.admin)),
    ),
    ("POST", "/admin/tenants/{tenant_name}/unsuspend"): (
        "tenant.unsuspend",
        lambda c, k, t, _: c.post("/admin/tenants/beta/unsuspend", headers=auth(k.admin)),
    ),
    ("POST", "/admin/tenants/{tenant_name}/keys"): (
        "key.create",
        lambda c, k, t, state: state.setdefault(
            "key", c.post("/admin/tenants/beta/keys", headers=auth(k.admin))
        ),
    ),
    ("POST", "/admin/keys/{key_id}/revoke"): (
        "key.revoke",
        lambda c, k, t, state: c.post(
            f"/admin/keys/{state['key'].json()['id']}/revoke", headers=auth(k.admin)
        ),
    ),
    ("POST", "/admin/fine_tuning/jobs/{fine_tuning_job_id}/pause"): (
        "job.pause",
        lambda c, k, t, state: c.post(
            f"/admin/fine_tuning/jobs/{state['running']}/pause", headers=auth(k.admin)
        ),
    ),
    ("POST", "/admin/fine_tuning/jobs/{fine_tuning_job_id}/resume"): (
        "job.resume",
        lambda c, k, t, state: c.post(
            f"/admin/fine_tuning/jobs/{state['running']}/resume", headers=auth(k.admin)
        ),
    ),
    ("POST", "/admin/fine_tuning/jobs/{fine_tuning_job_id}/cancel"): (
        "job.cancel",
        lambda c, k, t, state: c.post(
            f"/admin/fine_tuning/jobs/{state['running']}/cancel", headers=auth(k.admin)
        ),
    ),
}


def test_every_state_changing_admin_route_writes_one_audit_row(
    app: FastAPI,
    client: TestClient,
    keys: Keys,
    job_id: str,
    tmp_path: Path,
    session_factory: sessionmaker[Session],
) -> None:
    routes = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/admin")
        for method in operations
        if method.upper() in STATE_CHANGING
    }
    assert routes == set(AUDITED), "a state-changing /admin route has no audit check here"
    with session_factory() as session:  # another tenant's job, running on some worker
        session.execute(update(Job).where(Job.id == job_id).values(status="running", attempt=1))
        session.commit()
    state: dict[str, Any] = {"running": job_id}
    for (method, path), (action, call) in AUDITED.items():
        before = len(_actions(session_factory))
        response = call(client, keys, tmp_path, state)
        assert response.status_code in (200, 201), f"{method} {path}: {response.text}"
        rows = _actions(session_factory)
        assert len(rows) == before + 1, f"{method} {path} wrote {len(rows) - before} audit rows"
        row = rows[-1]
        assert (row.action, row.via, row.actor_tenant) == (action, "api", "provider")
        assert row.actor_key_id.startswith("key-") and row.target_id

    failed = client.patch("/admin/tenants/nobody", headers=auth(keys.admin), json={"policy": {}})
    assert failed.status_code == 404
    assert len(_actions(session_factory)) == len(AUDITED)  # a failed action writes no row


def test_audit_log_is_paginated_newest_first(client: TestClient, keys: Keys) -> None:
    for name in ("t1", "t2", "t3"):
        assert (
            client.post("/admin/tenants", headers=auth(keys.admin), json={"name": name}).status_code
            == 201
        )
    first = client.get("/admin/audit?limit=2", headers=auth(keys.admin)).json()
    assert [a["target_id"] for a in first["data"]] == ["t3", "t2"] and first["has_more"]
    second = client.get(f"/admin/audit?limit=2&after={first['last_id']}", headers=auth(keys.admin))
    assert [a["target_id"] for a in second.json()["data"]] == ["t1"]
    assert not second.json()["has_more"]
    one = client.get("/admin/audit?target_id=t2", headers=auth(keys.admin)).json()["data"]
    assert [(a["action"], a["actor"]["via"]) for a in one] == [("tenant.create", "api")]
    bad = client.post("/admin/tenants", headers=auth(keys.admin), json={"name": "<script>"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_tenant_name"
    dup = client.post("/admin/tenants", headers=auth(keys.admin), json={"name": "t1"})
    assert dup.status_code == 409
    assert (
        client.get("/admin/audit?after=adminact-nope", headers=auth(keys.admin)).status_code == 400
    )


def test_tenant_usage_on_both_databases(
    client: TestClient, keys: Keys, job_id: str, session_factory: sessionmaker[Session]
) -> None:
    """The Tenants page's grouped usage queries (FILTER, joins) on SQLite and PostgreSQL."""
    from api.dashboard.console_queries import tenant_usage
    from core.models import LineReview, Tenant

    with session_factory() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="failed", error_code="safety_gate", trained_tokens=500)
        )
        session.add(LineReview(job_id=job_id, line=2, decision="harmful", api_key_id="key-x"))
        session.add(LineReview(job_id=job_id, line=4, decision="benign", api_key_id="key-x"))
        session.commit()
        ids = dict(session.execute(select(Tenant.name, Tenant.id)).all())
        usage = tenant_usage(session)
        only_beta = tenant_usage(session, [ids["beta"]])
    alpha = usage[ids["alpha"]]
    assert alpha.jobs_by_status == {"failed": 1} and alpha.jobs == 1
    assert alpha.trained_tokens == 500 and alpha.gate_failures == 1
    assert alpha.files == 1 and alpha.file_bytes > 0
    assert alpha.confirmed_harmful == 1 and alpha.active_keys == 1
    assert set(only_beta) == {ids["beta"]} and only_beta[ids["beta"]].jobs == 0
