"""Provider-console operations shared by /admin and the dashboard: tenants (create, suspend,
keys), the worker registry and the audit log. Nothing here commits: the caller records the
audit row and commits both together."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import authcache
from api.errors import Conflict, NotFound
from api.ids import is_object_id
from api.pagination import cursor_seq, fetch_page
from core import tenants, workers
from core.models import AdminAction, ApiKey, Tenant, Worker, now

TENANT_NAME_MAX = 128
# Stopped workers stay listed this long, so a crash-free shutdown is still visible for a day.
STOPPED_SHOWN_S = 24 * 3600


def tenant_by_name(session: Session, name: str, *, for_update: bool = False) -> Tenant:
    row = None
    if 0 < len(name) <= TENANT_NAME_MAX and "\x00" not in name:
        row = tenants.find_tenant(session, name, for_update=for_update)
    if row is None:
        raise NotFound(f"No such tenant: {name[:128]!r}", param="tenant_name")
    return row


def create_tenant(session: Session, name: str) -> Tenant:
    if tenants.find_tenant(session, name) is not None:
        raise Conflict(
            f"A tenant named {name!r} already exists.", param="name", code="tenant_exists"
        )
    row = Tenant(name=name)
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError as exc:
        raise Conflict(
            f"A tenant named {name!r} already exists.", param="name", code="tenant_exists"
        ) from exc
    return row


def set_suspended(
    session: Session, name: str, *, suspended: bool, cancel_queued_jobs: bool = False
) -> tenants.SuspensionResult:
    tenant = tenant_by_name(session, name)
    result = tenants.set_suspended(
        session, tenant, suspended=suspended, cancel_queued_jobs=cancel_queued_jobs
    )
    session.commit()  # before the cache is emptied, so no request refills it with the old state
    authcache.forget_all()
    return result


def create_key(session: Session, name: str, *, admin: bool, secret: bytes) -> tuple[ApiKey, str]:
    return tenants.issue_key(session, tenant_by_name(session, name), admin=admin, secret=secret)


def list_keys(session: Session, name: str) -> list[ApiKey]:
    return tenants.list_keys(session, tenant_by_name(session, name))


def revoke_key(session: Session, key_id: str, *, tenant: Tenant | None = None) -> ApiKey:
    """Revoke a key; with ``tenant``, only a key of that tenant (a page acts on its own keys)."""
    row = tenants.find_key(session, key_id) if is_object_id(key_id) else None
    if row is None or (tenant is not None and row.tenant_id != tenant.id):
        raise NotFound(f"No such API key: {key_id[:64]!r}", param="key_id")
    if row.revoked_at is not None:
        raise Conflict(f"The key {row.id} is already revoked.", param="key_id", code="key_revoked")
    try:
        tenants.revoke_key(session, row)
    except tenants.LastAdminKey as exc:
        raise Conflict(
            f"{row.id} is the last active admin key; create another admin key before revoking "
            "it, or the console and /admin would be locked.",
            param="key_id",
            code="last_admin_key",
        ) from exc
    session.commit()
    authcache.forget_all()
    return row


def list_workers(session: Session, *, heartbeat_interval_s: float) -> list[tuple[Worker, str]]:
    at = now()
    stale_after = workers.stale_after_s(heartbeat_interval_s)
    rows = workers.list_workers(session, stopped_since=at - STOPPED_SHOWN_S)
    return [(row, workers.liveness(row, at=at, stale_after=stale_after)) for row in rows]


def list_actions(
    session: Session,
    *,
    after: str | None,
    limit: int,
    action: str | None = None,
    target_id: str | None = None,
) -> tuple[list[AdminAction], bool]:
    """The audit log, newest first, optionally one action or one target's history."""
    scope = []
    if action is not None:
        scope.append(AdminAction.action == action)
    if target_id is not None:
        scope.append(AdminAction.target_id == target_id)
    after_seq = cursor_seq(session, AdminAction.seq, AdminAction.id, after, scope)
    query = select(AdminAction).where(*scope)
    return fetch_page(session, query, AdminAction.seq, after_seq=after_seq, limit=limit)
