"""The dashboard in a real browser: Playwright driving Debian's Chromium against a real uvicorn
on a spare port, on a temporary FTAAS_HOME (SQLite). These tests run in ``make test``: without
Chromium they fail with a message saying how to install it (scripts/install.sh does).

Screenshots go to ``var/screenshots/`` (docs/dashboard-*.png are copies of them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import select, update

from core.config import Settings
from core.db import session_factory, session_scope
from core.models import Job, LineReview
from tests.dashboard.conftest import make_settings
from tests.dashboard.seed import Seed, add_metrics, add_safety, seed

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "var" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
POLL_S = 1.0


@dataclass(frozen=True)
class Server:
    url: str
    settings: Settings
    seed: Seed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            "Chromium is needed for the dashboard's browser tests: "
            "apt-get install -y chromium (scripts/install.sh does it)."
        )
    home = tmp_path_factory.mktemp("browser") / "home"
    settings = make_settings(home, dashboard_poll_s=POLL_S)
    data = seed(settings)
    with session_scope(session_factory(settings.resolved_database_url)) as s:
        job = s.scalars(select(Job).where(Job.id == data.running_job)).one()
        for step, harmful, ok in ((20, 0.15, True), (30, 0.19, True), (40, 0.23, False)):
            add_safety(s, job.id, job.tenant_id, step, harmful, ok)
    port = _free_port()
    env = {
        **os.environ,
        "FTAAS_HOME": str(home),
        "FTAAS_DATABASE_URL": settings.resolved_database_url,
        "FTAAS_BROKER_URL": settings.resolved_broker_url,
        "FTAAS_KEY_SECRET": "test-secret",
        "FTAAS_DASHBOARD_POLL_S": str(POLL_S),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app"]
        + ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("uvicorn exited at start")
            time.sleep(0.1)
    try:
        yield Server(f"http://127.0.0.1:{port}", settings, data)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.goto("/dashboard/login")
    page.fill("input[name=api_key]", server.seed.admin_key)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/")
    yield page
    context.close()
    assert violations == [], f"the page broke its own CSP: {violations}"


def _shot(page: Page, name: str, *, full_page: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=full_page)


def test_wrong_key_is_refused_in_the_browser(browser: Browser, server: Server) -> None:
    context = browser.new_context(base_url=server.url)
    page = context.new_page()
    page.goto("/dashboard/login")
    page.fill("input[name=api_key]", server.seed.user_key)
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("not an admin key")
    context.close()


def test_running_job_updates_live_then_cancel(page: Page, server: Server) -> None:
    job_id = server.seed.running_job
    expect(page.locator("#running-jobs")).to_contain_text(job_id)
    _shot(page, "dashboard-overview.png")
    page.click(f"#running-jobs a[href='/dashboard/jobs/{job_id}']")
    expect(page.locator("#job-step")).to_have_text("step 20/100")
    # The worker reports more steps while the page is open: it updates without a reload.
    with session_scope(session_factory(server.settings.resolved_database_url)) as s:
        job = s.scalars(select(Job).where(Job.id == job_id)).one()
        add_metrics(s, job.id, job.tenant_id, range(21, 61))
        s.execute(update(Job).where(Job.id == job_id).values(step=60))
    expect(page.locator("#job-step")).to_have_text("step 60/100", timeout=10_000)
    expect(page.locator("#events")).to_contain_text("Step 60/100")
    _shot(page, "dashboard-job.png", full_page=False)
    # Cancel through the confirmation step.
    page.click("text=Cancel job")
    page.click("button:has-text('Cancel job')")
    expect(page.locator("#job-status")).to_have_text("cancelled")
    assert page.locator("#job-live[hx-trigger]").count() == 0
    with session_scope(session_factory(server.settings.resolved_database_url)) as s:
        assert s.scalar(select(Job.status).where(Job.id == job_id)) == "cancelled"


def test_review_decision_persists_across_reload(page: Page, server: Server) -> None:
    job_id = server.seed.running_job
    page.click("nav >> text=Review")
    row = page.locator(f"#flag-{job_id}-3")
    text = row.locator("pre.line")
    expect(text).to_be_hidden()  # collapsed by default
    row.locator("summary").click()
    expect(text).to_contain_text("<script>alert(1)</script>")  # shown as text, not run
    row.get_by_role("button", name="Harmful").click()  # htmx, with the CSRF header
    expect(page.locator(f"#flag-{job_id}-3 .decision")).to_have_text("harmful")
    expect(page.locator("#precision")).to_contain_text("1 decided")  # updated in place
    page.goto("/dashboard/review?show=all")
    expect(page.locator(f"#flag-{job_id}-3 .decision")).to_have_text("harmful")
    expect(page.locator("#precision")).to_contain_text("1 decided")
    page.locator(f"#flag-{job_id}-3 summary").click()
    _shot(page, "dashboard-review.png")
    with session_scope(session_factory(server.settings.resolved_database_url)) as s:
        assert s.scalar(select(LineReview.decision).where(LineReview.line == 3)) == "harmful"
