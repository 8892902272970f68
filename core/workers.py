"""The worker registry: each worker process keeps its own row (registered at start, heartbeated
by a timer also while idle, marked stopped on a clean shutdown). It lives in the database, so it
works whatever the broker (kombu's SQLite transport has no broadcast, so Celery's ``inspect
ping`` cannot list workers there)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.models import Worker, now

Liveness = Literal["alive", "stale", "stopped"]


def _rows(result: Any) -> int:
    """Rows matched by an UPDATE (typed as Any: SQLAlchemy types execute() as a plain Result)."""
    return int(result.rowcount)


@dataclass(frozen=True)
class Registration:
    id: str
    host: str
    pid: int
    queues: list[str]
    device: str | None
    memory_total: int | None
    version: str | None


def register(session: Session, reg: Registration, *, memory_used: int | None = None) -> None:
    """Insert or take over the row of this worker name (a restarted worker keeps its name)."""
    values: dict[str, Any] = {
        "host": reg.host,
        "pid": reg.pid,
        "queues": list(reg.queues),
        "device": reg.device,
        "memory_total": reg.memory_total,
        "memory_used": memory_used,
        "version": reg.version,
        "current_job_id": None,
        "started_at": now(),
        "last_seen_at": now(),
        "stopped_at": None,
    }
    result = session.execute(
        update(Worker)
        .where(Worker.id == reg.id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if _rows(result) == 0:
        try:
            with session.begin_nested():
                session.add(Worker(id=reg.id, **values))
        except IntegrityError:  # registered concurrently under the same name: take it over
            session.execute(update(Worker).where(Worker.id == reg.id).values(**values))


def heartbeat(session: Session, worker_id: str, *, memory_used: int | None) -> bool:
    """Refresh ``last_seen_at``; False when the row is gone (the caller registers again)."""
    result = session.execute(
        update(Worker)
        .where(Worker.id == worker_id)
        .values(last_seen_at=now(), memory_used=memory_used, stopped_at=None)
        .execution_options(synchronize_session=False)
    )
    return _rows(result) == 1


def set_current_job(session: Session, worker_id: str, job_id: str | None) -> None:
    session.execute(
        update(Worker)
        .where(Worker.id == worker_id)
        .values(current_job_id=job_id, last_seen_at=now())
        .execution_options(synchronize_session=False)
    )


def mark_stopped(session: Session, worker_id: str) -> None:
    session.execute(
        update(Worker)
        .where(Worker.id == worker_id)
        .values(stopped_at=now(), current_job_id=None)
        .execution_options(synchronize_session=False)
    )


def stale_after_s(heartbeat_interval_s: float) -> int:
    """A worker silent for three heartbeats (and at least 30 s) is shown as stale."""
    return int(max(3 * registry_interval_s(heartbeat_interval_s), 30))


def registry_interval_s(heartbeat_interval_s: float) -> float:
    """The registry heartbeats as often as jobs do, but not more than once a second (tests set
    a 0.2 s job heartbeat; the registry needs no such resolution)."""
    return max(heartbeat_interval_s, 1.0)


def liveness(row: Worker, *, at: int, stale_after: int) -> Liveness:
    if row.stopped_at is not None:
        return "stopped"
    return "alive" if at - row.last_seen_at <= stale_after else "stale"


def list_workers(session: Session, *, stopped_since: int | None = None) -> list[Worker]:
    """Running workers (alive or stale), plus those stopped since ``stopped_since``; by name."""
    query = select(Worker).order_by(Worker.id)
    if stopped_since is not None:
        query = query.where((Worker.stopped_at.is_(None)) | (Worker.stopped_at >= stopped_since))
    return list(session.scalars(query))
