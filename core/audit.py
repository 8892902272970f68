"""The admin audit log: one row per state-changing admin action, from the dashboard or /admin.

``record`` adds the row to the caller's session; it is committed with (or right after) the
action it describes, so a failed action leaves no row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import AdminAction, ApiKey

Via = Literal["dashboard", "api"]


@dataclass(frozen=True)
class Actor:
    key_id: str
    tenant: str
    via: Via

    @classmethod
    def of(cls, key: ApiKey, via: Via) -> Actor:
        return cls(key_id=key.id, tenant=key.tenant.name, via=via)


def record(
    session: Session,
    actor: Actor,
    action: str,
    *,
    target_type: str,
    target_id: str,
    detail: dict[str, Any] | None = None,
) -> AdminAction:
    row = AdminAction(
        actor_key_id=actor.key_id,
        actor_tenant=actor.tenant,
        via=actor.via,
        action=action,
        target_type=target_type,
        target_id=target_id[:256],
        detail=detail or {},
    )
    session.add(row)
    return row


def actor_of_key_id(session: Session, key_id: str, via: Via) -> Actor:
    """The actor for a key known by id (a dashboard session carries only the key's id)."""
    key = session.scalar(select(ApiKey).where(ApiKey.id == key_id))
    return Actor(key_id=key_id, tenant=key.tenant.name if key else "", via=via)
