"""Sign-in and sign-out.

``POST /dashboard/login`` takes an admin API key (form field ``api_key``), opens a server-side
session and sets its token in an HttpOnly, SameSite=Strict cookie scoped to ``/dashboard``.
Failed attempts are counted per client address and throttled. The login form is protected
against login CSRF by the same-origin check (there is no session yet to hold a token).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from api.dashboard.auth import COOKIE, COOKIE_PATH, AdminAction, DashboardError
from api.dashboard.render import render
from api.dashboard.security import same_origin
from api.deps import SessionDep, SettingsDep
from core import dashboard_sessions
from core.models import ApiKey
from core.security import hash_key

router = APIRouter()

WRONG_KEY = "That key is not a valid API key."
NOT_ADMIN = "That key is valid but not an admin key: the dashboard is for the provider only."
REVOKED = "That key has been revoked."


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return render(request, "login.html", {"error": None})


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    api_key: Annotated[str, Form(max_length=512)] = "",
) -> Response:
    if not same_origin(request):
        raise DashboardError(403, "Refused: this request did not come from the sign-in page.")
    client = _client(request)
    wait = dashboard_sessions.retry_after(
        session,
        client=client,
        max_failures=settings.dashboard_login_max_failures,
        window_s=settings.dashboard_login_window_s,
    )
    if wait:
        session.commit()
        response = render(
            request,
            "login.html",
            {"error": f"Too many failed sign-ins from {client}. Try again in {wait} s."},
            status_code=429,
        )
        response.headers["retry-after"] = str(wait)
        return response
    secret = request.app.state.key_secret()
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(api_key.strip(), secret)))
    error = None
    if key is None:
        error = WRONG_KEY
    elif key.revoked_at is not None:
        error = REVOKED
    elif not key.is_admin:
        error = NOT_ADMIN
    if error is not None or key is None:
        dashboard_sessions.record_failure(session, client=client)
        session.commit()
        return render(request, "login.html", {"error": error}, status_code=401)
    token = dashboard_sessions.create(
        session, key=key, secret=secret, ttl_s=settings.dashboard_session_ttl_s
    )
    session.commit()
    redirect = RedirectResponse("/dashboard/", status_code=303)
    redirect.set_cookie(
        COOKIE,
        token,
        max_age=settings.dashboard_session_ttl_s,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return redirect


@router.post("/logout")
def logout(request: Request, admin: AdminAction, session: SessionDep) -> Response:
    dashboard_sessions.revoke(session, session_seq=admin.session_seq)
    session.commit()
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response
