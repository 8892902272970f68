"""The provider-console pages: Tenants (usage, policy, keys, suspension), Models (lineage,
alignment progress, policy, queue an alignment), Files, Workers and Audit; every action's effect
on the database, its audit row, CSRF, and escaping of tenant-controlled text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.dashboard.router import PAGES
from core import audit, workers
from core.accounts import create_key
from core.config import Settings
from core.db import session_factory, session_scope
from core.models import AdminAction, ApiKey, Job, JobEvent, LineReview, Model, Tenant, Worker, now
from tests.dashboard.conftest import ORIGIN
from tests.dashboard.seed import SCRIPT, Seed


def _session(settings: Settings) -> Any:
    return session_scope(session_factory(settings.resolved_database_url))


def _post(client: TestClient, url: str, token: str, **data: str) -> Any:
    return client.post(url, data={"csrf_token": token, **data}, headers={"Origin": ORIGIN})


def _actions(settings: Settings) -> list[AdminAction]:
    with _session(settings) as s:
        return list(s.scalars(select(AdminAction).order_by(AdminAction.seq)))


def _v1(client: TestClient, key: str) -> Any:
    return client.get("/v1/files", headers={"Authorization": f"Bearer {key}"})


def _queued_job(settings: Settings, tenant: str = "acme") -> str:
    with _session(settings) as s:
        running = s.scalars(select(Job).where(Job.status == "running")).first()
        assert running is not None
        tenant_id = s.scalars(select(Tenant.id).where(Tenant.name == tenant)).one()
        job = Job(
            tenant_id=tenant_id,
            model="base-model",
            training_file=running.training_file,
            status="queued",
            seed=3,
            enqueued_at=now(),
        )
        s.add(job)
        s.flush()
        return job.id


def _models(settings: Settings) -> str:
    """A base model and its pending aligned model, whose alignment job has trained 3 of 10."""
    with _session(settings) as s:
        tenant_id = s.scalars(select(Tenant.id).where(Tenant.name == "provider")).one()
        running = s.scalars(select(Job).where(Job.status == "running")).first()
        assert running is not None
        job = Job(
            tenant_id=tenant_id,
            model="base-model",
            kind="alignment",
            training_file=running.training_file,
            status="running",
            seed=0,
            step=3,
            total_steps=10,
        )
        s.add(job)
        s.flush()
        s.add(JobEvent(job_id=job.id, tenant_id=tenant_id, type="metrics", message="m",
                       data={"step": 3, "train_loss": 1.25}))  # fmt: skip
        s.add_all(
            [
                Model(id="base-model", source="local", path="/m", status="ready",
                      safety={"harmful_score": 0.42, "over_refusal": 0.03}),
                Model(id="base-model-antibody", source="aligned", kind="aligned",
                      status="pending", base_model="base-model", method="antibody",
                      alignment_job_id=job.id, lineage={"note": SCRIPT}),
            ]
        )  # fmt: skip
        return job.id


class TestTenants:
    def test_usage(
        self, client: TestClient, admin: str, seeded: Seed, dash_settings: Settings
    ) -> None:
        with _session(dash_settings) as s:
            s.add(LineReview(job_id=seeded.running_job, line=3, decision="harmful", api_key_id="k"))
            s.execute(update(Job).where(Job.id == seeded.failed_job).values(trained_tokens=1234))
        page = client.get("/dashboard/tenants")
        assert page.status_code == 200
        row = page.text.split('href="/dashboard/tenants/acme"')[1].split("</tr>")[0]
        cells = [c.split("<")[0] for c in row.split('<td class="num">')[1:]]
        # jobs, trained tokens, files, bytes, gate failures, confirmed harmful, active keys
        assert cells[0] == "2" and cells[1] == "1,234" and cells[2] == "1"
        assert cells[4] == "1" and cells[5] == "1" and cells[6] == "1"
        assert "running 1" in row and "failed 1" in row
        detail = client.get("/dashboard/tenants/acme")
        assert detail.status_code == 200 and "confirmed harmful lines" in detail.text
        assert client.get("/dashboard/tenants/nobody").status_code == 404

    def test_suspend_cancels_queued_jobs_and_refuses_its_keys(
        self, client: TestClient, admin: str, seeded: Seed, dash_settings: Settings
    ) -> None:
        queued = _queued_job(dash_settings)
        assert _v1(client, seeded.user_key).status_code == 200
        r = _post(client, "/dashboard/tenants/acme/suspend", admin, cancel_queued_jobs="yes")
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/tenants/acme"
        refused = _v1(client, seeded.user_key)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "tenant_suspended"
        with _session(dash_settings) as s:
            status = dict(s.execute(select(Job.id, Job.status)).all())
        assert status[queued] == "cancelled" and status[seeded.running_job] == "running"
        assert 'id="tenant-status">suspended' in client.get("/dashboard/tenants/acme").text
        assert client.get("/dashboard/").status_code == 200  # the admin's session is unaffected

        assert _post(client, "/dashboard/tenants/acme/unsuspend", admin).status_code == 303
        assert _v1(client, seeded.user_key).status_code == 200
        rows = _actions(dash_settings)
        assert [(a.action, a.via, a.target_id) for a in rows] == [
            ("tenant.suspend", "dashboard", "acme"),
            ("tenant.unsuspend", "dashboard", "acme"),
        ]
        assert rows[0].detail["cancelled_jobs"] == [queued]
        assert rows[0].actor_tenant == "provider" and rows[0].actor_key_id.startswith("key-")

    def test_suspend_without_csrf_or_origin_is_refused(
        self, client: TestClient, admin: str, seeded: Seed, dash_settings: Settings
    ) -> None:
        no_token = client.post("/dashboard/tenants/acme/suspend", headers={"Origin": ORIGIN})
        assert no_token.status_code == 403
        wrong = client.post(
            "/dashboard/tenants/acme/suspend",
            data={"csrf_token": admin},
            headers={"Origin": "http://evil.example"},
        )
        assert wrong.status_code == 403
        assert _v1(client, seeded.user_key).status_code == 200
        assert _actions(dash_settings) == []

    def test_key_shown_once_then_revoked(
        self, client: TestClient, admin: str, seeded: Seed, dash_settings: Settings
    ) -> None:
        r = _post(client, "/dashboard/tenants/acme/keys", admin, kind="user")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        key = r.text.split('id="new-key-value">')[1].split("<")[0]
        assert key.startswith("sk-ftaas-")
        assert _v1(client, key).status_code == 200
        again = client.get("/dashboard/tenants/acme").text
        assert key not in again and 'id="new-key"' not in again
        with _session(dash_settings) as s:
            row = s.scalars(select(ApiKey).where(ApiKey.prefix == key[:13])).one()
        assert row.is_admin is False
        revoked = _post(client, f"/dashboard/tenants/acme/keys/{row.id}/revoke", admin)
        assert revoked.status_code == 303
        assert _v1(client, key).status_code == 401
        assert _v1(client, seeded.user_key).status_code == 200
        # A key of another tenant cannot be revoked through this tenant's page.
        with _session(dash_settings) as s:
            admin_key_id = s.scalars(
                select(ApiKey.id).where(ApiKey.is_admin.is_(True), ApiKey.revoked_at.is_(None))
            ).one()
        other = _post(client, f"/dashboard/tenants/acme/keys/{admin_key_id}/revoke", admin)
        assert other.status_code == 404  # not acme's key: refused before anything changes
        assert [a.action for a in _actions(dash_settings)] == ["key.create", "key.revoke"]
        assert key not in str([a.detail for a in _actions(dash_settings)])

    def test_policy_edit(self, client: TestClient, admin: str, dash_settings: Settings) -> None:
        assert (
            _post(
                client, "/dashboard/tenants/acme/policy", admin, safety_gate_margin="0.05"
            ).status_code
            == 303
        )
        with _session(dash_settings) as s:
            assert s.scalars(select(Tenant.policy).where(Tenant.name == "acme")).one() == {
                "safety_gate_margin": 0.05
            }
        bad = _post(client, "/dashboard/tenants/acme/policy", admin, safety_gate_margin="2")
        assert bad.status_code == 400 and "safety_gate_margin must be" in bad.text
        assert (
            _post(
                client, "/dashboard/tenants/acme/policy", admin, safety_gate_margin="x"
            ).status_code
            == 400
        )
        assert (
            _post(
                client, "/dashboard/tenants/acme/policy", admin, safety_gate_margin=""
            ).status_code
            == 303
        )
        with _session(dash_settings) as s:
            assert s.scalars(select(Tenant.policy).where(Tenant.name == "acme")).one() == {}
        assert [a.action for a in _actions(dash_settings)] == ["tenant.policy", "tenant.policy"]

    def test_create_tenant(self, client: TestClient, admin: str, dash_settings: Settings) -> None:
        r = _post(client, "/dashboard/tenants", admin, name="globex")
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/tenants/globex"
        assert _post(client, "/dashboard/tenants", admin, name="globex").status_code == 409
        assert _post(client, "/dashboard/tenants", admin, name=SCRIPT).status_code == 400

    def test_tenant_name_is_escaped(
        self, client: TestClient, admin: str, dash_settings: Settings
    ) -> None:
        with _session(dash_settings) as s:  # names from the CLI are not restricted
            create_key(s, tenant_name=SCRIPT, admin=False, secret=b"x")
        page = client.get("/dashboard/tenants").text
        assert SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


class TestModels:
    def test_lineage_progress_and_scores(
        self, client: TestClient, admin: str, dash_settings: Settings
    ) -> None:
        job_id = _models(dash_settings)
        page = client.get("/dashboard/models").text
        assert page.index("base-model</span>") < page.index("base-model-antibody")
        assert 'value="3"' in page and "step 3/10" in page and "loss 1.25" in page
        assert f'href="/dashboard/jobs/{job_id}"' in page and "0.42" in page
        assert SCRIPT not in page  # lineage JSON escaped

    def test_policy_and_alignment(
        self, client: TestClient, admin: str, dash_settings: Settings
    ) -> None:
        _models(dash_settings)
        ok = _post(client, "/dashboard/models/policy", admin, model_id="base-model", tau="0.5",
                   defense="lisa")  # fmt: skip
        assert ok.status_code == 303
        with _session(dash_settings) as s:
            policy = s.scalars(select(Model.policy).where(Model.id == "base-model")).one()
        assert policy == {"tau": 0.5, "defense": "lisa"}
        sft = _post(client, "/dashboard/models/policy", admin, model_id="base-model", defense="sft")
        assert sft.status_code == 400 and "allow_sft" in sft.text
        assert _post(client, "/dashboard/models/policy", admin, model_id="nope").status_code == 404

        queued = _post(client, "/dashboard/models/align", admin, base="base-model", method="booster",
                       steps="5")  # fmt: skip
        assert queued.status_code == 303, queued.text
        job_id = queued.headers["location"].rsplit("/", 1)[1]
        with _session(dash_settings) as s:
            job = s.scalars(select(Job).where(Job.id == job_id)).one()
            assert job.kind == "alignment" and job.status == "queued"
            assert (
                s.scalars(select(Model.status).where(Model.id == "base-model-booster")).one()
                == "pending"
            )
        bad = _post(client, "/dashboard/models/align", admin, base="base-model", method="x")
        assert bad.status_code == 400
        assert [a.action for a in _actions(dash_settings)] == ["model.policy", "alignment.create"]

    def test_register_a_local_model(
        self, client: TestClient, admin: str, dash_settings: Settings
    ) -> None:
        ok = _post(client, "/dashboard/models/register", admin, model_id="org/m1",
                   path=_model_dir(dash_settings))  # fmt: skip
        assert ok.status_code == 303
        with _session(dash_settings) as s:
            row = s.scalars(select(Model).where(Model.id == "org/m1")).one()
            assert row.source == "local" and row.status == "ready"
        assert "org/m1" in client.get("/dashboard/models").text
        again = _post(client, "/dashboard/models/register", admin, model_id="org/m1",
                      path=_model_dir(dash_settings))  # fmt: skip
        assert again.status_code == 409
        missing = _post(client, "/dashboard/models/register", admin, model_id="m2", path="/nope")
        assert missing.status_code == 400 and "config.json" in missing.text
        bad_id = _post(client, "/dashboard/models/register", admin, model_id="ft:x", path="/nope")
        assert bad_id.status_code == 400
        assert [a.action for a in _actions(dash_settings)] == ["model.register"]


class TestFilesWorkersAudit:
    def test_files_filter_and_escape(
        self, client: TestClient, admin: str, seeded: Seed, dash_settings: Settings
    ) -> None:
        page = client.get("/dashboard/files?tenant=acme&status=processed")
        assert page.status_code == 200 and seeded.training_file in page.text
        assert SCRIPT not in page.text and "evil&lt;script&gt;" in page.text
        assert "1 of 8 lines flagged" in page.text
        assert seeded.training_file not in client.get("/dashboard/files?status=error").text
        detail = client.get(f"/dashboard/files/{seeded.training_file}").text
        assert SCRIPT not in detail and seeded.running_job in detail and "-1.25" in detail
        assert client.get("/dashboard/files/file-nope").status_code == 404

    def test_workers(self, client: TestClient, admin: str, dash_settings: Settings) -> None:
        with _session(dash_settings) as s:
            for name in ("training@gpu1", "training@gpu2"):
                reg = workers.Registration(
                    name, "gpu-host", 7, ["training"], "cuda: H200", 2**36, "0.1.0"
                )
                workers.register(s, reg, memory_used=3 * 2**20)
            workers.set_current_job(s, "training@gpu1", "ftjob-abc")
            s.execute(
                update(Worker).where(Worker.id == "training@gpu2").values(last_seen_at=now() - 999)
            )
        page = client.get("/dashboard/workers").text
        gpu1 = page.split("training@gpu1")[1].split("</tr>")[0]
        assert "alive" in gpu1 and "ftjob-abc" in gpu1 and "3 MiB" in gpu1 and "cuda: H200" in gpu1
        assert "stale" in page.split("training@gpu2")[1].split("</tr>")[0]
        assert 'id="workers-alive">1<' in client.get("/dashboard/").text

    def test_audit_page_pages_and_escapes(
        self, client: TestClient, admin: str, dash_settings: Settings
    ) -> None:
        with _session(dash_settings) as s:
            actor = audit.Actor(key_id="key-x", tenant="provider", via="api")
            for i in range(55):
                audit.record(s, actor, "tenant.policy", target_type="tenant", target_id=f"t{i}",
                             detail={"note": SCRIPT})  # fmt: skip
        page = client.get("/dashboard/audit").text
        assert ">t54<" in page and ">t5<" in page and ">t4<" not in page and SCRIPT not in page
        older = page.split('href="/dashboard/audit?after=')[1].split('"')[0]
        second = client.get(f"/dashboard/audit?after={older}").text
        assert ">t4<" in second and ">t54<" not in second
        assert ">t3<" in client.get("/dashboard/audit?target_id=t3").text


# Every POST of the console pages (login and logout are not admin actions on the service).
Act = Callable[[TestClient, str, Seed, Settings], Any]
DASHBOARD_ACTIONS: dict[str, tuple[str, Act]] = {
    "/tenants": ("tenant.create", lambda c, t, s, _: _post(c, "/dashboard/tenants", t, name="n1")),
    "/tenants/{tenant_name}/policy": (
        "tenant.policy",
        lambda c, t, s, _: _post(c, "/dashboard/tenants/acme/policy", t, safety_gate_margin="0.1"),
    ),
    "/tenants/{tenant_name}/keys": (
        "key.create",
        lambda c, t, s, _: _post(c, "/dashboard/tenants/acme/keys", t),
    ),
    "/tenants/{tenant_name}/keys/{key_id}/revoke": (
        "key.revoke",
        lambda c, t, s, st: _post(c, f"/dashboard/tenants/acme/keys/{_user_key_id(st)}/revoke", t),
    ),
    "/tenants/{tenant_name}/suspend": (
        "tenant.suspend",
        lambda c, t, s, _: _post(c, "/dashboard/tenants/acme/suspend", t),
    ),
    "/tenants/{tenant_name}/unsuspend": (
        "tenant.unsuspend",
        lambda c, t, s, _: _post(c, "/dashboard/tenants/acme/unsuspend", t),
    ),
    "/models/policy": (
        "model.policy",
        lambda c, t, s, _: _post(c, "/dashboard/models/policy", t, model_id="base-model", tau="1"),
    ),
    "/models/register": (
        "model.register",
        lambda c, t, s, st: _post(
            c, "/dashboard/models/register", t, model_id="mine", path=_model_dir(st)
        ),  # fmt: skip
    ),
    "/models/align": (
        "alignment.create",
        lambda c, t, s, _: _post(c, "/dashboard/models/align", t, base="base-2", method="sft"),
    ),
    "/jobs/{job_id}/{action}": (
        "job.pause",
        lambda c, t, s, _: _post(c, f"/dashboard/jobs/{s.running_job}/pause", t),
    ),
    "/review/decide": (
        "line.review",
        lambda c, t, s, _: _post(
            c, "/dashboard/review/decide", t, job_id=s.running_job, line="3", decision="harmful"
        ),  # fmt: skip
    ),
}


def _model_dir(settings: Settings) -> str:
    path = settings.resolved_home / "my-model"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text('{"model_type": "gpt2"}')
    return str(path)


def _user_key_id(settings: Settings) -> str:
    with _session(settings) as s:
        tenant_id = s.scalars(select(Tenant.id).where(Tenant.name == "acme")).one()
        return str(s.scalars(select(ApiKey.id).where(ApiKey.tenant_id == tenant_id)).first())


def test_every_dashboard_action_writes_one_audit_row(
    client: TestClient, admin: str, seeded: Seed, dash_settings: Settings
) -> None:
    posts = {
        route.path
        for page in PAGES
        for route in page.routes
        if "POST" in getattr(route, "methods", set()) and route.path not in ("/login", "/logout")
    }
    assert posts == set(DASHBOARD_ACTIONS), "a dashboard action has no audit check here"
    _models(dash_settings)
    with _session(dash_settings) as s:
        s.add(Model(id="base-2", source="local", path="/m2", status="ready"))
    for path, (action, act) in DASHBOARD_ACTIONS.items():
        before = len(_actions(dash_settings))
        response = act(client, admin, seeded, dash_settings)
        assert response.status_code in (200, 303), f"{path}: {response.text[:500]}"
        rows = _actions(dash_settings)
        assert len(rows) == before + 1, path
        assert (rows[-1].action, rows[-1].via) == (action, "dashboard")
