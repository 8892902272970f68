"""Tenants and their API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import ApiKey, Tenant
from core.security import hash_key
from core.tenants import issue_key


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, *, tenant_name: str, admin: bool, secret: bytes) -> str:
    """Create a key for ``tenant_name`` (creating the tenant if needed); returns the key itself,
    which is never stored and cannot be shown again."""
    tenant = get_or_create_tenant(session, tenant_name)
    return issue_key(session, tenant, admin=admin, secret=secret)[1]


def authenticate(session: Session, *, key: str, secret: bytes) -> ApiKey | None:
    return find_key(session, hash_key(key, secret))


def find_key(session: Session, key_hash: str) -> ApiKey | None:
    """The live (not revoked) key with this keyed hash."""
    return session.scalar(
        select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )
