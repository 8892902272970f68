"""Tenants ``/dashboard/tenants``: usage per tenant; one tenant's page with its release policy,
its keys (create: the new key is shown once; revoke) and suspension (optionally cancelling its
jobs that have not started). Every action goes through the same functions as the /admin routes
(api.admin.console_service, api.admin.service) and writes an audit row via "dashboard"."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.admin import console_service, service
from api.admin.console_schemas import TenantCreate
from api.admin.schemas import TenantPolicyUpdate
from api.dashboard import audited, console_queries
from api.dashboard.auth import Admin, AdminAction, DashboardError
from api.dashboard.render import render
from api.deps import SessionDep, SettingsDep
from api.errors import ApiError
from core import tenants
from core.dashboard_sessions import SignedIn

router = APIRouter()

TenantName = Annotated[str, Path(max_length=128)]


def invalid(error: ValidationError) -> DashboardError:
    first = error.errors()[0]
    return DashboardError(400, str(first.get("msg", "Invalid value.")))


def _tenant(session: Session, name: str) -> Any:
    try:
        return console_service.tenant_by_name(session, name)
    except ApiError as error:
        raise DashboardError(error.status_code, error.message) from error


@router.get("/tenants", response_class=HTMLResponse)
def tenant_list(request: Request, admin: Admin, session: SessionDep) -> HTMLResponse:
    rows = console_queries.tenants(session)
    usage = console_queries.tenant_usage(session)
    context = {"rows": [(t, usage.get(t.id, console_queries.Usage())) for t in rows]}
    return render(request, "tenants.html", context, active="tenants")


@router.post("/tenants")
def create_tenant(
    admin: AdminAction, session: SessionDep, name: Annotated[str, Form(max_length=200)]
) -> Response:
    try:
        body = TenantCreate(name=name)
    except ValidationError as error:
        raise invalid(error) from error
    try:
        row = console_service.create_tenant(session, body.name)
    except ApiError as error:
        raise DashboardError(error.status_code, error.message) from error
    audited.record(session, admin, "tenant.create", target_type="tenant", target_id=row.name)
    return RedirectResponse(f"/dashboard/tenants/{row.name}", status_code=303)


def _page(
    request: Request,
    session: Session,
    name: str,
    settings: Any,
    *,
    new_key: str | None = None,
    notice: str | None = None,
) -> HTMLResponse:
    tenant = _tenant(session, name)
    usage = console_queries.tenant_usage(session, [tenant.id]).get(
        tenant.id, console_queries.Usage()
    )
    context = {
        "tenant": tenant,
        "usage": usage,
        "keys": tenants.list_keys(session, tenant),
        "new_key": new_key,
        "notice": notice,
        "default_margin": settings.safety_gate_margin,
    }
    return render(request, "tenant.html", context, active="tenants")


@router.get("/tenants/{tenant_name}", response_class=HTMLResponse)
def tenant_page(
    request: Request,
    admin: Admin,
    session: SessionDep,
    settings: SettingsDep,
    tenant_name: TenantName,
) -> HTMLResponse:
    return _page(request, session, tenant_name, settings)


@router.post("/tenants/{tenant_name}/policy")
def set_policy(
    admin: AdminAction,
    session: SessionDep,
    tenant_name: TenantName,
    safety_gate_margin: Annotated[str, Form(max_length=32)] = "",
) -> Response:
    """An empty margin removes the tenant's override (the server's setting applies)."""
    raw = safety_gate_margin.strip()
    try:
        value: float | None = float(raw) if raw else None
    except ValueError:
        raise DashboardError(
            400, f"safety_gate_margin must be a number; got {raw[:32]!r}"
        ) from None
    try:
        body = TenantPolicyUpdate.model_validate({"policy": {"safety_gate_margin": value}})
        row = service.update_tenant_policy(session=session, name=tenant_name, body=body)
    except ValidationError as error:
        raise invalid(error) from error
    except ApiError as error:
        raise DashboardError(error.status_code, error.message) from error
    audited.record(
        session,
        admin,
        "tenant.policy",
        target_type="tenant",
        target_id=row.name,
        detail={"patch": {"safety_gate_margin": value}, "policy": row.policy},
    )
    return RedirectResponse(f"/dashboard/tenants/{row.name}", status_code=303)


@router.post("/tenants/{tenant_name}/keys", response_class=HTMLResponse)
def create_key(
    request: Request,
    admin: AdminAction,
    session: SessionDep,
    settings: SettingsDep,
    tenant_name: TenantName,
    kind: Annotated[str, Form(max_length=8)] = "user",
) -> HTMLResponse:
    """Renders the tenant's page with the new key on it, once (the response is no-store)."""
    if kind not in ("user", "admin"):
        raise DashboardError(400, f"kind must be user or admin; got {kind!r}")
    try:
        row, key = console_service.create_key(
            session, tenant_name, admin=kind == "admin", secret=request.app.state.key_secret()
        )
    except ApiError as error:
        raise DashboardError(error.status_code, error.message) from error
    audited.record(
        session,
        admin,
        "key.create",
        target_type="api_key",
        target_id=row.id,
        detail={"tenant": tenant_name, "admin": row.is_admin, "prefix": row.prefix},
    )
    return _page(request, session, tenant_name, settings, new_key=key)


@router.post("/tenants/{tenant_name}/keys/{key_id}/revoke")
def revoke_key(
    admin: AdminAction,
    session: SessionDep,
    tenant_name: TenantName,
    key_id: Annotated[str, Path(max_length=64)],
) -> Response:
    tenant = _tenant(session, tenant_name)
    try:
        row = console_service.revoke_key(session, key_id, tenant=tenant)
    except ApiError as error:
        raise DashboardError(error.status_code, error.message) from error
    audited.record(
        session,
        admin,
        "key.revoke",
        target_type="api_key",
        target_id=row.id,
        detail={"tenant": tenant_name, "prefix": row.prefix},
    )
    return RedirectResponse(f"/dashboard/tenants/{tenant.name}", status_code=303)


def _suspension(
    admin: SignedIn, session: Session, name: str, *, suspended: bool, cancel: bool
) -> Response:
    try:
        result = console_service.set_suspended(
            session, name, suspended=suspended, cancel_queued_jobs=cancel
        )
    except ApiError as error:
        raise DashboardError(error.status_code, error.message) from error
    detail: dict[str, Any] = {"changed": result.changed}
    if suspended:
        detail |= {"cancel_queued_jobs": cancel, "cancelled_jobs": result.cancelled_jobs}
    audited.record(
        session,
        admin,
        "tenant.suspend" if suspended else "tenant.unsuspend",
        target_type="tenant",
        target_id=result.tenant.name,
        detail=detail,
    )
    return RedirectResponse(f"/dashboard/tenants/{result.tenant.name}", status_code=303)


@router.post("/tenants/{tenant_name}/suspend")
def suspend(
    admin: AdminAction,
    session: SessionDep,
    tenant_name: TenantName,
    cancel_queued_jobs: Annotated[str, Form(max_length=8)] = "",
) -> Response:
    return _suspension(
        admin, session, tenant_name, suspended=True, cancel=cancel_queued_jobs == "yes"
    )


@router.post("/tenants/{tenant_name}/unsuspend")
def unsuspend(admin: AdminAction, session: SessionDep, tenant_name: TenantName) -> Response:
    return _suspension(admin, session, tenant_name, suspended=False, cancel=False)
