"""Upload-screening statuses of a file and the conditional updates that move it between them
(as ``core.jobs`` does for jobs): one function per transition, every status change here.

``queued`` -> ``running`` (a worker claims it, heartbeats ``safety_heartbeat_at``) ->
``completed`` or ``failed``. A file whose worker went silent goes back to ``queued`` (and is
sent again by the sweeper), or to ``failed`` after ``max_attempts`` claims.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from core.models import File, now


class ScreeningStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


def _changed(result: Any) -> bool:
    return int(result.rowcount) == 1


def claim(session: Session, file_id: str, worker_id: str) -> bool:
    """queued -> running for this worker (a duplicate message finds nothing to claim)."""
    return _changed(
        session.execute(
            update(File)
            .where(File.id == file_id, File.safety_status == ScreeningStatus.QUEUED)
            .values(
                safety_status=ScreeningStatus.RUNNING,
                safety_worker=worker_id,
                safety_heartbeat_at=now(),
                safety_attempts=File.safety_attempts + 1,
            )
            .execution_options(synchronize_session=False)
        )
    )


def _mine(file_id: str, worker_id: str) -> tuple[Any, ...]:
    return (
        File.id == file_id,
        File.safety_status == ScreeningStatus.RUNNING,
        File.safety_worker == worker_id,
    )


def heartbeat(session: Session, file_id: str, worker_id: str) -> bool:
    """False: the screening is no longer this worker's (re-queued by the sweeper)."""
    return _changed(
        session.execute(
            update(File)
            .where(*_mine(file_id, worker_id))
            .values(safety_heartbeat_at=now())
            .execution_options(synchronize_session=False)
        )
    )


def finish(
    session: Session,
    file_id: str,
    worker_id: str,
    *,
    status: ScreeningStatus,
    report: dict[str, Any] | None,
) -> bool:
    """running -> completed / failed (the report), or back to queued (``report`` None)."""
    return _changed(
        session.execute(
            update(File)
            .where(*_mine(file_id, worker_id))
            .values(safety_status=status, safety_report=report, safety_worker=None)
            .execution_options(synchronize_session=False)
        )
    )


def recover_stale(session: Session, *, older_than: int, max_attempts: int) -> list[str]:
    """Files whose screening worker went silent: back to queued (returned, to be sent again), or
    failed once they were claimed ``max_attempts`` times."""
    requeued = []
    for row in session.scalars(
        select(File).where(
            File.safety_status == ScreeningStatus.RUNNING,
            or_(File.safety_heartbeat_at.is_(None), File.safety_heartbeat_at < older_than),
        )
    ):
        base = (File.id == row.id, File.safety_status == ScreeningStatus.RUNNING)
        if int(row.safety_attempts or 0) >= max_attempts:
            session.execute(
                update(File)
                .where(*base)
                .values(
                    safety_status=ScreeningStatus.FAILED,
                    safety_worker=None,
                    safety_report={
                        "error": f"Screening failed: its worker stopped responding "
                        f"{row.safety_attempts} times."
                    },
                )
                .execution_options(synchronize_session=False)
            )
            continue
        seen = (
            File.safety_heartbeat_at.is_(None)
            if row.safety_heartbeat_at is None
            else File.safety_heartbeat_at == row.safety_heartbeat_at
        )
        result = session.execute(
            update(File)
            .where(*base, seen)
            .values(safety_status=ScreeningStatus.QUEUED, safety_worker=None)
            .execution_options(synchronize_session=False)
        )
        if _changed(result):
            requeued.append(row.id)
    return requeued


def lost_queued(session: Session, *, older_than: int) -> list[str]:
    """Files still queued ``older_than`` after their upload or last re-send (stamped as
    ``safety_report.resent_at``): their message may be lost. Stamps them."""
    ids = []
    for row in session.scalars(
        select(File).where(
            File.safety_status == ScreeningStatus.QUEUED,
            File.created_at < older_than,
            File.deleted_at.is_(None),
        )
    ):
        if int((row.safety_report or {}).get("resent_at", 0)) < older_than:
            row.safety_report = {**(row.safety_report or {}), "resent_at": now()}
            ids.append(row.id)
    return ids
