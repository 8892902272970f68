"""Templates and the one function pages render with.

Templates are ``.html`` so Jinja2 autoescapes everything; markup built in Python (the SVG
charts) is ``markupsafe.Markup`` made from escaped parts only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from core.dashboard_sessions import SignedIn

HERE = Path(__file__).parent


@dataclass(frozen=True)
class NavItem:
    key: str
    label: str
    href: str


# Every page of the dashboard, in menu order; ``active`` in render() names the current one.
NAV = (
    NavItem("overview", "Overview", "/dashboard/"),
    NavItem("jobs", "Jobs", "/dashboard/jobs"),
    NavItem("review", "Review", "/dashboard/review"),
    NavItem("tenants", "Tenants", "/dashboard/tenants"),
    NavItem("models", "Models", "/dashboard/models"),
    NavItem("files", "Files", "/dashboard/files"),
    NavItem("workers", "Workers", "/dashboard/workers"),
    NavItem("audit", "Audit", "/dashboard/audit"),
)


def timestamp(ts: int | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | int | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{round(s / 60)} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def ago(ts: int | None) -> str:
    return "-" if ts is None else duration(time.time() - ts) + " ago"


def number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(timestamp=timestamp, duration=duration, ago=ago, number=number)


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    active: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    """Render a template with the signed-in admin (if any), the CSRF token and the menu."""
    admin: SignedIn | None = getattr(request.state, "admin", None)
    full = {
        "admin": admin,
        "csrf_token": admin.csrf_token if admin else "",
        "nav": NAV,
        "active": active,
        "poll_s": request.app.state.settings.dashboard_poll_s,
        **(context or {}),
    }
    return templates.TemplateResponse(request, name, full, status_code=status_code)
