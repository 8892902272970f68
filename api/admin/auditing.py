"""The audit dependency of /admin: every state-changing admin route takes ``Audit`` and calls
``audit.record(...)`` once its action succeeded (tests/api/test_admin_audit.py walks the app's
routes to check that none forgot). The dashboard records through core.audit directly, via
"dashboard"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy.orm import Session

from api.deps import AdminKey, SessionDep
from core import audit


@dataclass
class Auditor:
    session: Session
    actor: audit.Actor

    def record(
        self, action: str, *, target_type: str, target_id: str, detail: dict[str, Any] | None = None
    ) -> None:
        """Add the audit row and commit it with whatever the action left uncommitted."""
        audit.record(
            self.session,
            self.actor,
            action,
            target_type=target_type,
            target_id=target_id,
            detail=detail,
        )
        self.session.commit()


async def get_auditor(key: AdminKey, session: SessionDep) -> Auditor:
    return Auditor(session=session, actor=audit.Actor.of(key, "api"))


Audit = Annotated[Auditor, Depends(get_auditor)]
