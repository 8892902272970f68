"""The console pages in a real browser (dash's Playwright harness, its own server): suspending
a tenant from its page makes the tenant's key fail on /v1, and unsuspending restores it."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tests.dashboard.test_browser import (  # noqa: F401  (fixtures: a server, Chromium, a signed-in page)
    Server,
    _shot,
    browser,
    page,
    server,
)


def _v1_files(running: Server) -> httpx.Response:
    key = running.seed.user_key
    return httpx.get(f"{running.url}/v1/files", headers={"Authorization": f"Bearer {key}"})


def test_suspending_a_tenant_in_the_browser_makes_its_key_fail(
    page: Page,  # noqa: F811
    server: Server,  # noqa: F811
) -> None:
    assert _v1_files(server).status_code == 200
    page.click("nav >> text=Tenants")
    page.click("#tenants a[href='/dashboard/tenants/acme']")
    expect(page.locator("#tenant-status")).to_have_text("active")
    page.check("input[name=cancel_queued_jobs]")
    page.click("#suspend")
    expect(page.locator("#tenant-status")).to_have_text("suspended")
    _shot(page, "dashboard-tenant.png")
    refused = _v1_files(server)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "tenant_suspended"

    page.click("#unsuspend")
    expect(page.locator("#tenant-status")).to_have_text("active")
    assert _v1_files(server).status_code == 200
    page.click("nav >> text=Audit")
    expect(page.locator("#audit")).to_contain_text("tenant.unsuspend")
    expect(page.locator("#audit")).to_contain_text("tenant.suspend")
