"""What each page shows, escaping of tenant-controlled text, and every action's effect on the
database (cancel, pause, resume, review decisions)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from core.config import Settings
from core.db import session_factory, session_scope
from core.models import Job, JobEvent, LineReview
from tests.dashboard.conftest import ORIGIN
from tests.dashboard.seed import SCRIPT, Seed, add_metrics, add_safety


def _job(settings: Settings, job_id: str) -> Job:
    with session_scope(session_factory(settings.resolved_database_url)) as s:
        return s.scalars(select(Job).where(Job.id == job_id)).one()


def _post(client: TestClient, path: str, token: str, **data: str) -> Any:
    return client.post(path, data={"csrf_token": token, **data}, headers={"Origin": ORIGIN})


class TestOverview:
    def test_shows_the_service_state(self, client: TestClient, admin: str, seeded: Seed) -> None:
        page = client.get("/dashboard/").text
        assert seeded.running_job in page  # running jobs with their worker
        assert "host:123" in page
        assert "safety_gate" in page  # failures of the last 24 h
        assert 'id="unreviewed">2<' in page  # two flagged lines, none decided
        assert 'id="workers-alive">0<' in page  # no worker has registered
        assert 'id="queue-depth">0<' in page
        assert "<title>Overview · ftaas</title>" in page
        assert 'hx-trigger="every 30s"' in page  # refreshes itself

    def test_stale_running_job_is_marked(
        self, client: TestClient, admin: str, seeded: Seed, dash_settings: Settings
    ) -> None:
        with session_scope(session_factory(dash_settings.resolved_database_url)) as s:
            job = s.scalars(select(Job).where(Job.id == seeded.running_job)).one()
            job.heartbeat_at = 1000
        assert "badge stale" in client.get("/dashboard/").text


class TestJobs:
    def test_filters(self, client: TestClient, admin: str, seeded: Seed) -> None:
        page = client.get("/dashboard/jobs?status=failed").text
        assert seeded.failed_job in page and seeded.running_job not in page
        page = client.get("/dashboard/jobs?error_code=safety_gate&tenant=acme").text
        assert seeded.failed_job in page
        page = client.get("/dashboard/jobs?tenant=nobody").text
        assert "No jobs match" in page
        page = client.get(f"/dashboard/jobs?job={seeded.failed_job[-6:]}").text
        assert seeded.failed_job in page and seeded.running_job not in page
        assert "No jobs match" in client.get("/dashboard/jobs?job=%25").text  # no wildcards

    def test_job_page_charts_and_safety_history(
        self, client: TestClient, admin: str, seeded: Seed
    ) -> None:
        page = client.get(f"/dashboard/jobs/{seeded.running_job}").text
        assert page.count("<svg") == 3
        assert "release gate 0.200" in page  # start 0.1 + margin 0.1
        assert "<polyline" in page
        assert 'class="marker"' in page  # a deployable marker per evaluated checkpoint
        assert 'hx-trigger="every 5.0s"' in page  # live while running
        # A terminal job's page does not poll.
        done = client.get(f"/dashboard/jobs/{seeded.failed_job}").text
        assert "hx-trigger" not in done
        assert "not deployable" in done

    def test_live_fragment_is_204_until_something_changes(
        self, client: TestClient, admin: str, seeded: Seed, dash_settings: Settings
    ) -> None:
        import re

        live = client.get(f"/dashboard/jobs/{seeded.running_job}/live")
        assert live.status_code == 200
        match = re.search(r'hx-get="([^"]+)"', live.text)
        assert match
        url = match.group(1).replace("&amp;", "&")
        assert client.get(url).status_code == 204  # nothing new
        with session_scope(session_factory(dash_settings.resolved_database_url)) as s:
            job = s.scalars(select(Job).where(Job.id == seeded.running_job)).one()
            add_metrics(s, job.id, job.tenant_id, range(21, 22))
        fresh = client.get(url)
        assert fresh.status_code == 200 and "Step 21/100" in fresh.text

    def test_unknown_job_is_404(self, client: TestClient, admin: str) -> None:
        assert client.get("/dashboard/jobs/ftjob-nope").status_code == 404

    def test_markup_in_tenant_data_is_inert(
        self, client: TestClient, admin: str, seeded: Seed
    ) -> None:
        for path in (
            f"/dashboard/jobs/{seeded.running_job}",
            "/dashboard/jobs",
            "/dashboard/review",
        ):
            page = client.get(path).text
            assert SCRIPT not in page, path
        job_page = client.get(f"/dashboard/jobs/{seeded.running_job}").text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in job_page  # suffix and line 3, escaped

    def test_cancel_confirm_then_post(
        self, client: TestClient, admin: str, seeded: Seed, dash_settings: Settings
    ) -> None:
        confirm = client.get(f"/dashboard/jobs/{seeded.running_job}/cancel")
        assert confirm.status_code == 200 and "Cancel job" in confirm.text
        assert _job(dash_settings, seeded.running_job).status == "running"  # GET changes nothing
        response = _post(client, f"/dashboard/jobs/{seeded.running_job}/cancel", admin)
        assert response.status_code == 303
        job = _job(dash_settings, seeded.running_job)
        assert job.status == "cancelled" and job.finished_at is not None
        with session_scope(session_factory(dash_settings.resolved_database_url)) as s:
            messages = s.scalars(select(JobEvent.message).where(JobEvent.job_id == job.id))
            assert "Fine-tuning job cancelled" in list(messages)
        # A second cancel is a clear conflict, not a 500.
        again = _post(client, f"/dashboard/jobs/{seeded.running_job}/cancel", admin)
        assert again.status_code == 409 and "only unfinished jobs" in again.text

    def test_pause_then_resume(
        self, client: TestClient, admin: str, seeded: Seed, dash_settings: Settings
    ) -> None:
        assert (
            _post(client, f"/dashboard/jobs/{seeded.running_job}/pause", admin).status_code == 303
        )
        assert _job(dash_settings, seeded.running_job).status == "paused"
        response = _post(client, f"/dashboard/jobs/{seeded.running_job}/resume", admin)
        assert response.status_code == 303
        job = _job(dash_settings, seeded.running_job)
        assert job.status == "queued" and job.worker_id is None

    def test_resume_of_a_running_job_conflicts(
        self, client: TestClient, admin: str, seeded: Seed
    ) -> None:
        response = _post(client, f"/dashboard/jobs/{seeded.running_job}/resume", admin)
        assert response.status_code == 409

    def test_safety_history_survives_checkpoint_pruning(
        self, client: TestClient, admin: str, seeded: Seed, dash_settings: Settings
    ) -> None:
        # Five evaluated checkpoints as events; the checkpoints table holds none of them.
        with session_scope(session_factory(dash_settings.resolved_database_url)) as s:
            job = s.scalars(select(Job).where(Job.id == seeded.running_job)).one()
            for step in (20, 30, 40, 50):
                add_safety(s, job.id, job.tenant_id, step, 0.1 + step / 1000, True)
        page = client.get(f"/dashboard/jobs/{seeded.running_job}").text
        assert page.count('class="marker"') == 5


class TestReview:
    def test_lists_flagged_lines_most_down_weighted_first(
        self, client: TestClient, admin: str, seeded: Seed
    ) -> None:
        page = client.get("/dashboard/review").text
        assert page.index(f"flag-{seeded.running_job}-3") < page.index(
            f"flag-{seeded.running_job}-5"
        )
        assert "<details>" in page  # collapsed by default
        assert "-1.25" in page  # the upload-screening score of line 3
        assert "No decisions yet" in page

    @pytest.mark.parametrize("via_htmx", [False, True])
    def test_decision_is_stored_and_counted(
        self, client: TestClient, admin: str, seeded: Seed, dash_settings: Settings, via_htmx: bool
    ) -> None:
        headers = {"Origin": ORIGIN}
        if via_htmx:
            headers |= {"HX-Request": "true", "X-CSRF-Token": admin}
        data = {"job_id": seeded.running_job, "line": "3", "decision": "harmful"}
        if not via_htmx:
            data["csrf_token"] = admin
        response = client.post("/dashboard/review/decide", data=data, headers=headers)
        if via_htmx:
            assert response.status_code == 200 and "badge harmful" in response.text
        else:
            assert response.status_code == 303
        data |= {"line": "5", "decision": "benign"}
        client.post("/dashboard/review/decide", data=data, headers=headers)
        # Changing a decision updates the one row.
        data |= {"decision": "harmful"}
        client.post("/dashboard/review/decide", data=data, headers=headers)
        with session_scope(session_factory(dash_settings.resolved_database_url)) as s:
            rows = {(r.line, r.decision) for r in s.scalars(select(LineReview))}
        assert rows == {(3, "harmful"), (5, "harmful")}
        page = client.get("/dashboard/review?show=all").text
        assert "100%" in page and "<strong>2</strong> decided" in page
        assert "No flagged lines" in client.get("/dashboard/review").text  # all decided

    def test_decision_on_an_unflagged_line_is_refused(
        self, client: TestClient, admin: str, seeded: Seed
    ) -> None:
        data = {"job_id": seeded.running_job, "line": "4", "decision": "harmful"}
        response = _post(client, "/dashboard/review/decide", admin, **data)
        assert response.status_code == 400
        assert "not a flagged line" in response.text

    def test_unknown_decision_is_refused(
        self, client: TestClient, admin: str, seeded: Seed
    ) -> None:
        data = {"job_id": seeded.running_job, "line": "3", "decision": "maybe"}
        response = _post(client, "/dashboard/review/decide", admin, **data)
        assert 400 <= response.status_code < 500


@pytest.mark.parametrize("backend", ["production"])
def test_overview_on_postgresql(settings: Settings) -> None:
    """The overview's aggregate queries (json_array_length included) also run on PostgreSQL."""
    from api.main import create_app
    from tests.dashboard.conftest import sign_in
    from tests.dashboard.seed import seed

    data = seed(settings)
    with TestClient(create_app(settings), follow_redirects=False) as client:
        sign_in(client, data.admin_key)
        page = client.get("/dashboard/").text
        assert 'id="unreviewed">2<' in page
        job_page = client.get(f"/dashboard/jobs/{data.running_job}").text
        assert job_page.count('class="marker"') == 1  # the safety event, read on PostgreSQL
        assert "Step 20/100" in job_page and "<polyline" in job_page
        assert "release gate 0.200" in job_page
        assert client.get("/dashboard/review").status_code == 200
