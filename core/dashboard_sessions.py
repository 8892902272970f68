"""Dashboard sign-in: server-side sessions and the failed-sign-in throttle.

The browser holds a random token in a cookie; the table holds only its HMAC (under the same
secret as API keys), so sessions can be revoked one by one and a database copy opens none.
A session is valid while it is unexpired, unrevoked, and its admin key is itself unrevoked and
still an admin key: revoking the key signs its browser sessions out too.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core.models import ApiKey, DashboardSession, LoginFailure, now
from core.security import hash_key

KEEP_ENDED_S = 24 * 3600


@dataclass(frozen=True)
class SignedIn:
    """What a page needs to know about the signed-in admin."""

    session_seq: int
    api_key_id: str
    key_prefix: str
    tenant_id: str
    csrf_token: str
    expires_at: int


def create(session: Session, *, key: ApiKey, secret: bytes, ttl_s: int) -> str:
    """Open a session for an admin key; returns the cookie token (never stored)."""
    if not key.is_admin or key.revoked_at is not None:
        raise ValueError("only an unrevoked admin key may open a dashboard session")
    token = secrets.token_urlsafe(32)
    ts = now()
    # Sign-ins are rare: a good moment to drop sessions that ended more than a day ago.
    session.execute(delete(DashboardSession).where(DashboardSession.expires_at < ts - KEEP_ENDED_S))
    session.add(
        DashboardSession(
            token_hash=hash_key(token, secret),
            api_key_id=key.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=ts,
            expires_at=ts + ttl_s,
        )
    )
    session.flush()
    return token


def lookup(session: Session, *, token: str, secret: bytes) -> SignedIn | None:
    row = session.execute(
        select(DashboardSession, ApiKey)
        .join(ApiKey, ApiKey.id == DashboardSession.api_key_id)
        .where(
            DashboardSession.token_hash == hash_key(token, secret),
            DashboardSession.revoked_at.is_(None),
            DashboardSession.expires_at > now(),
            ApiKey.revoked_at.is_(None),
            ApiKey.is_admin.is_(True),
        )
    ).first()
    if row is None:
        return None
    dash, key = row
    return SignedIn(
        session_seq=dash.seq,
        api_key_id=key.id,
        key_prefix=key.prefix,
        tenant_id=key.tenant_id,
        csrf_token=dash.csrf_token,
        expires_at=dash.expires_at,
    )


def revoke(session: Session, *, session_seq: int) -> bool:
    result = session.execute(
        update(DashboardSession)
        .where(DashboardSession.seq == session_seq, DashboardSession.revoked_at.is_(None))
        .values(revoked_at=now())
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


def record_failure(session: Session, *, client: str) -> None:
    session.add(LoginFailure(client=client[:64], at=now()))


def retry_after(session: Session, *, client: str, max_failures: int, window_s: int) -> int:
    """Seconds this client must wait before trying again (0: it may try now). Old rows are
    deleted on the way, so the table holds at most one window of failures."""
    cutoff = now() - window_s
    session.execute(delete(LoginFailure).where(LoginFailure.at <= cutoff))
    count, oldest = session.execute(
        select(func.count(), func.min(LoginFailure.at)).where(LoginFailure.client == client[:64])
    ).one()
    if count < max_failures or oldest is None:
        return 0
    return max(1, int(oldest) + window_s - now())
