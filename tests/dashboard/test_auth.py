"""Sign-in, sessions, CSRF and Origin checks, headers, and the JSON API ignoring the cookie."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from core.config import Settings
from core.db import session_factory, session_scope
from core.models import DashboardSession, LoginFailure
from tests.dashboard.conftest import ORIGIN, sign_in
from tests.dashboard.seed import Seed


def _login(client: TestClient, key: str, origin: str | None = ORIGIN) -> Any:
    headers = {"Origin": origin} if origin else {}
    return client.post("/dashboard/login", data={"api_key": key}, headers=headers)


def _sessions(settings: Settings) -> list[DashboardSession]:
    with session_scope(session_factory(settings.resolved_database_url)) as s:
        return list(s.scalars(select(DashboardSession)))


class TestSignIn:
    def test_form_has_one_password_field(self, client: TestClient) -> None:
        page = client.get("/dashboard/login")
        assert page.status_code == 200
        assert page.text.count('type="password"') == 1
        assert 'name="api_key"' in page.text

    def test_admin_key_opens_a_session(
        self, client: TestClient, seeded: Seed, dash_settings: Settings
    ) -> None:
        response = _login(client, seeded.admin_key)
        assert response.status_code == 303
        assert response.headers["location"] == "/dashboard/"
        cookie = response.headers["set-cookie"]
        assert "ftaas_dash=" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
        assert "Path=/dashboard" in cookie
        assert "Secure" not in cookie  # plain http here; https sets it
        rows = _sessions(dash_settings)
        assert len(rows) == 1
        token = client.cookies.get("ftaas_dash")
        assert token and token not in rows[0].token_hash  # only a hash is stored
        assert client.get("/dashboard/").status_code == 200

    def test_cookie_is_secure_over_https(self, dash_settings: Settings, seeded: Seed) -> None:
        from api.main import create_app

        app = create_app(dash_settings)
        with TestClient(app, base_url="https://testserver", follow_redirects=False) as c:
            response = c.post(
                "/dashboard/login",
                data={"api_key": seeded.admin_key},
                headers={"Origin": "https://testserver"},
            )
        assert response.status_code == 303
        assert "Secure" in response.headers["set-cookie"]

    def test_user_key_refused(self, client: TestClient, seeded: Seed, dash_settings: Settings):
        response = _login(client, seeded.user_key)
        assert response.status_code == 401
        assert "not an admin key" in response.text
        assert "set-cookie" not in response.headers
        assert _sessions(dash_settings) == []

    def test_revoked_key_refused(self, client: TestClient, seeded: Seed, dash_settings: Settings):
        response = _login(client, seeded.revoked_key)
        assert response.status_code == 401
        assert "revoked" in response.text
        assert _sessions(dash_settings) == []

    def test_wrong_key_refused(self, client: TestClient, dash_settings: Settings) -> None:
        response = _login(client, "sk-ftaas-wrong")
        assert response.status_code == 401
        assert "not a valid API key" in response.text
        assert _sessions(dash_settings) == []

    def test_login_needs_same_origin(self, client: TestClient, seeded: Seed) -> None:
        assert _login(client, seeded.admin_key, origin=None).status_code == 403
        assert _login(client, seeded.admin_key, origin="http://evil.example").status_code == 403

    def test_failed_sign_ins_are_throttled(
        self, client: TestClient, seeded: Seed, dash_settings: Settings
    ) -> None:
        for _ in range(dash_settings.dashboard_login_max_failures):
            assert _login(client, "sk-ftaas-wrong").status_code == 401
        blocked = _login(client, seeded.admin_key)  # even the right key waits
        assert blocked.status_code == 429
        assert 0 < int(blocked.headers["retry-after"]) <= dash_settings.dashboard_login_window_s
        assert "Too many failed sign-ins" in blocked.text
        # Once the window has passed, it may try again.
        with session_scope(session_factory(dash_settings.resolved_database_url)) as s:
            s.execute(update(LoginFailure).values(at=int(time.time()) - 10_000))
        assert _login(client, seeded.admin_key).status_code == 303


class TestSessions:
    def test_pages_redirect_to_login_without_session(self, client: TestClient) -> None:
        for path in ("/dashboard/", "/dashboard/jobs", "/dashboard/review"):
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"] == "/dashboard/login"

    def test_htmx_poll_without_session_redirects_whole_page(
        self, client: TestClient, seeded: Seed
    ) -> None:
        response = client.get(
            f"/dashboard/jobs/{seeded.running_job}/live", headers={"HX-Request": "true"}
        )
        assert response.headers["hx-redirect"] == "/dashboard/login"

    def test_expired_session_is_refused(
        self, client: TestClient, admin: str, dash_settings: Settings
    ) -> None:
        with session_scope(session_factory(dash_settings.resolved_database_url)) as s:
            s.execute(update(DashboardSession).values(expires_at=int(time.time()) - 1))
        assert client.get("/dashboard/").status_code == 303

    def test_long_ended_sessions_are_dropped_at_the_next_sign_in(
        self, client: TestClient, admin: str, seeded: Seed, dash_settings: Settings
    ) -> None:
        with session_scope(session_factory(dash_settings.resolved_database_url)) as s:
            s.execute(update(DashboardSession).values(expires_at=int(time.time()) - 2 * 86400))
        sign_in(client, seeded.admin_key)
        assert len(_sessions(dash_settings)) == 1  # only the new one

    def test_logout_revokes_the_session(
        self, client: TestClient, admin: str, dash_settings: Settings
    ) -> None:
        token = client.cookies.get("ftaas_dash")
        response = client.post(
            "/dashboard/logout", data={"csrf_token": admin}, headers={"Origin": ORIGIN}
        )
        assert response.status_code == 303
        assert _sessions(dash_settings)[0].revoked_at is not None
        # The old cookie no longer works, even if a copy of it is replayed.
        client.cookies.set("ftaas_dash", token or "", path="/dashboard")
        assert client.get("/dashboard/").status_code == 303

    def test_revoking_the_key_ends_its_sessions(
        self, client: TestClient, admin: str, dash_settings: Settings
    ) -> None:
        from core.models import ApiKey

        with session_scope(session_factory(dash_settings.resolved_database_url)) as s:
            key_id = _sessions(dash_settings)[0].api_key_id
            s.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=1))
        assert client.get("/dashboard/").status_code == 303


class TestCsrfAndOrigin:
    def _cancel(
        self, client: TestClient, job: str, data: dict[str, str], headers: dict[str, str]
    ) -> Any:
        return client.post(f"/dashboard/jobs/{job}/cancel", data=data, headers=headers)

    def test_missing_or_wrong_token_is_403(
        self, client: TestClient, admin: str, seeded: Seed
    ) -> None:
        job = seeded.running_job
        assert self._cancel(client, job, {}, {"Origin": ORIGIN}).status_code == 403
        wrong = {"csrf_token": "x" * len(admin)}
        assert self._cancel(client, job, wrong, {"Origin": ORIGIN}).status_code == 403
        header = {"Origin": ORIGIN, "X-CSRF-Token": "nope"}
        assert self._cancel(client, job, {}, header).status_code == 403
        assert "running" in client.get(f"/dashboard/jobs/{job}").text  # nothing happened

    def test_missing_or_foreign_origin_is_403(
        self, client: TestClient, admin: str, seeded: Seed
    ) -> None:
        job = seeded.running_job
        ok = {"csrf_token": admin}
        assert self._cancel(client, job, ok, {}).status_code == 403
        assert self._cancel(client, job, ok, {"Origin": "http://evil.example"}).status_code == 403
        assert self._cancel(client, job, ok, {"Origin": "null"}).status_code == 403

    def test_header_token_is_accepted(self, client: TestClient, admin: str, seeded: Seed) -> None:
        headers = {"Origin": ORIGIN, "X-CSRF-Token": admin}
        response = self._cancel(client, seeded.running_job, {}, headers)
        assert response.status_code == 303


class TestHeadersAndIsolation:
    def test_pages_send_strict_headers(self, client: TestClient, admin: str) -> None:
        for path in ("/dashboard/login", "/dashboard/", "/dashboard/jobs", "/dashboard/review"):
            response = client.get(path)
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["cache-control"] == "no-store"
            assert "<script>" not in response.text.replace(
                '<script src="/dashboard/static/htmx.min.js" defer></script>', ""
            )

    def test_vendored_htmx_matches_its_note(self, client: TestClient) -> None:
        import hashlib
        from pathlib import Path

        import api.dashboard

        static = Path(api.dashboard.__file__).parent / "static"
        digest = hashlib.sha256((static / "htmx.min.js").read_bytes()).hexdigest()
        assert digest in (static / "VENDORED.md").read_text()
        assert client.get("/dashboard/static/htmx.min.js").status_code == 200

    def test_json_api_never_reads_the_cookie(self, client: TestClient, admin: str) -> None:
        # Signed in to the dashboard, the browser's cookie must not authorise /v1 or /admin.
        # (The cookie's Path is /dashboard, so send it explicitly as a forged request would.)
        token = client.cookies.get("ftaas_dash")
        cookie = {"Cookie": f"ftaas_dash={token}"}
        assert client.get("/v1/models", headers=cookie).status_code == 401
        assert client.get("/admin/tenants", headers=cookie).status_code == 401
        assert client.get("/admin/jobs", headers=cookie).status_code == 401
