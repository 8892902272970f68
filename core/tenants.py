"""Provider operations on tenants: suspend and unsuspend, create and revoke API keys.

A suspended tenant's keys are refused on /v1 (403 ``tenant_suspended``); its admin keys still
work on /admin so that a provider who suspends its own tenant is not locked out of the console.
Nothing here commits: the caller commits the change together with its audit row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core import jobs
from core.jobs import JobStatus
from core.models import ApiKey, Job, Tenant, now
from core.security import display_prefix, generate_key, hash_key

# Jobs that have not started training: suspending may cancel them in the same action. Running
# and paused jobs are left alone (the provider can cancel them one by one).
NOT_STARTED = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED)


def _rows(result: Any) -> int:
    """Rows matched by an UPDATE (typed as Any: SQLAlchemy types execute() as a plain Result)."""
    return int(result.rowcount)


@dataclass(frozen=True)
class SuspensionResult:
    tenant: Tenant
    changed: bool  # False: it already was in the requested state
    cancelled_jobs: list[str]


def find_tenant(session: Session, name: str, *, for_update: bool = False) -> Tenant | None:
    query = select(Tenant).where(Tenant.name == name)
    return session.scalar(query.with_for_update() if for_update else query)


def is_suspended(key: ApiKey) -> bool:
    return key.tenant.suspended_at is not None


def set_suspended(
    session: Session, tenant: Tenant, *, suspended: bool, cancel_queued_jobs: bool = False
) -> SuspensionResult:
    """The one place a tenant's status changes. A conditional UPDATE, so two admins racing both
    see a consistent result; ``cancel_queued_jobs`` (suspending only) cancels its jobs that have
    not started, through core.jobs.cancel like any other cancellation."""
    condition = Tenant.suspended_at.is_(None) if suspended else Tenant.suspended_at.is_not(None)
    result = session.execute(
        update(Tenant)
        .where(Tenant.id == tenant.id, condition)
        .values(suspended_at=now() if suspended else None)
        .execution_options(synchronize_session=False)
    )
    session.refresh(tenant)
    cancelled: list[str] = []
    if suspended and cancel_queued_jobs:
        waiting = session.scalars(
            select(Job).where(Job.tenant_id == tenant.id, Job.status.in_(NOT_STARTED))
        )
        for job in list(waiting):
            if jobs.cancel(session, job):
                jobs.add_event(session, job, "The job was cancelled: its tenant was suspended.")
                cancelled.append(job.id)
    return SuspensionResult(tenant, _rows(result) == 1, cancelled)


def issue_key(
    session: Session, tenant: Tenant, *, admin: bool, secret: bytes
) -> tuple[ApiKey, str]:
    """A new key for ``tenant``: the row (hash and display prefix only) and the key itself,
    which is never stored and cannot be shown again."""
    key = generate_key()
    row = ApiKey(
        tenant_id=tenant.id,
        key_hash=hash_key(key, secret),
        prefix=display_prefix(key),
        is_admin=admin,
    )
    session.add(row)
    session.flush()
    return row, key


def list_keys(session: Session, tenant: Tenant) -> list[ApiKey]:
    """Every key of the tenant, revoked ones too, oldest first."""
    return list(
        session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id).order_by(ApiKey.seq))
    )


def find_key(session: Session, key_id: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.id == key_id))


class LastAdminKey(Exception):
    """Revoking this key would leave the service without an active admin key."""


def revoke_key(session: Session, key: ApiKey) -> bool:
    """Revoke ``key`` (False: it already was). The last active admin key cannot be revoked:
    the console and /admin would be locked for good (only the CLI could mint a new one)."""
    if key.revoked_at is not None:
        return False
    if key.is_admin:
        active_admins = session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.is_admin.is_(True), ApiKey.revoked_at.is_(None))
        )
        if int(active_admins or 0) <= 1:
            raise LastAdminKey(f"{key.id} is the last active admin key.")
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now())
        .execution_options(synchronize_session=False)
    )
    session.refresh(key)
    return _rows(result) == 1
