"""Assembles the dashboard: one router per page module, the static files, the headers
middleware and the HTML error pages. ``install(app)`` is the only thing api/main.py calls.

To add a page module, import its ``router`` below and add it to ``PAGES`` (docs/dashboard.md,
"Adding a page").
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from api.dashboard import audit, files, jobs, login, models, overview, review, tenants, workers
from api.dashboard.auth import DashboardError, SignInRequired
from api.dashboard.render import HERE, render
from api.dashboard.security import DashboardHeaders

PAGES: tuple[APIRouter, ...] = (
    login.router,
    overview.router,
    jobs.router,
    review.router,
    tenants.router,
    models.router,
    files.router,
    workers.router,
    audit.router,
)


def build_router() -> APIRouter:
    router = APIRouter(prefix="/dashboard", include_in_schema=False)
    for page in PAGES:
        router.include_router(page)
    return router


async def _on_dashboard_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DashboardError)
    if isinstance(exc, SignInRequired):
        if request.headers.get("hx-request"):
            # An htmx poll after the session ended: send the whole page to the sign-in form.
            return Response(status_code=200, headers={"HX-Redirect": "/dashboard/login"})
        if request.method == "GET":
            return RedirectResponse("/dashboard/login", status_code=303)
    return render(
        request,
        "error.html",
        {"status": exc.status_code, "message": exc.message},
        status_code=exc.status_code,
    )


def install(app: FastAPI) -> None:
    app.include_router(build_router())
    app.mount(
        "/dashboard/static", StaticFiles(directory=str(HERE / "static")), name="dashboard-static"
    )
    app.add_middleware(DashboardHeaders)
    app.add_exception_handler(DashboardError, _on_dashboard_error)

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_root() -> RedirectResponse:
        return RedirectResponse("/dashboard/", status_code=307)
