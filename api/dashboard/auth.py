"""Who is signed in, and the checks every state-changing request passes.

Use in a page module::

    @router.get("/things")
    def things(request: Request, admin: Admin, session: SessionDep) -> HTMLResponse: ...

    @router.post("/things/{id}/do")
    def do(request: Request, admin: AdminAction, session: SessionDep) -> Response: ...

``Admin`` redirects to the sign-in page when there is no valid session. ``AdminAction`` also
requires a same-origin ``Origin`` header and the session's CSRF token (form field
``csrf_token`` or header ``X-CSRF-Token``), and answers 403 otherwise.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from api.dashboard.security import same_origin
from api.deps import SessionDep
from core import dashboard_sessions
from core.dashboard_sessions import SignedIn

COOKIE = "ftaas_dash"
COOKIE_PATH = "/dashboard"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


class DashboardError(Exception):
    """An error shown as a dashboard page (HTML), not as the JSON API's envelope."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


class SignInRequired(DashboardError):
    def __init__(self) -> None:
        super().__init__(401, "Sign in with an admin API key.")


def _signed_in(request: Request, session: SessionDep) -> SignedIn:
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignInRequired()
    found = dashboard_sessions.lookup(session, token=token, secret=request.app.state.key_secret())
    if found is None:
        raise SignInRequired()
    request.state.admin = found  # read by render() for the nav and the CSRF token
    return found


Admin = Annotated[SignedIn, Depends(_signed_in)]


async def _checked_action(request: Request, admin: Admin) -> SignedIn:
    if not same_origin(request):
        raise DashboardError(403, "Refused: this request did not come from a dashboard page.")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()  # Starlette caches it, so Form() parameters still work
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not secrets.compare_digest(sent, admin.csrf_token):
        raise DashboardError(403, "Refused: the form's security token is missing or wrong.")
    return admin


AdminAction = Annotated[SignedIn, Depends(_checked_action)]
