"""Audit rows for dashboard actions (via "dashboard"), the counterpart of api/admin/auditing.py:
every POST page action calls ``record`` once its action succeeded."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from core import audit
from core.dashboard_sessions import SignedIn


def record(
    session: Session,
    admin: SignedIn,
    action: str,
    *,
    target_type: str,
    target_id: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add the audit row and commit it with whatever the action left uncommitted."""
    actor = audit.actor_of_key_id(session, admin.api_key_id, "dashboard")
    audit.record(
        session, actor, action, target_type=target_type, target_id=target_id, detail=detail
    )
    session.commit()
