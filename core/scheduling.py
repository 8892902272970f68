"""Fair scheduling: which queued job a worker claims when a message asks it to run one.

A message names a job, but the message only stands for "a slot for one job of this kind": the
worker claims the *fairest* queued job of that kind instead, so one tenant's backlog of 100
messages cannot keep another tenant's single job waiting behind them.

Fairest: among tenants with queued jobs of the kind and below their running limit, the one
with the fewest running jobs per unit of priority, then the one served least recently
(``tenants.last_claimed_at``, round-robin), then the tenant of the job the message named. Within
that tenant the named job if it is queued, else its oldest queued job (by ``enqueued_at``).

Guarantees kept from ``core.jobs.claim``: one message claims at most one job, and a job is
claimed by one worker only (the same conditional UPDATE on ``status = 'queued'``). The running
limit is part of that UPDATE, under a lock on the tenant's row (PostgreSQL; SQLite serialises
writers), so concurrent workers cannot overshoot it. A message that finds nothing claimable
(every tenant at its limit) does nothing; ``next_for_tenant`` lets the worker re-send one for
a tenant whose job just ended, and the sweeper re-sends what is left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from core.config import Settings
from core.jobs import Claim, JobStatus
from core.models import Job, Tenant, now
from core.quotas import Limits, limits_for

CLAIM_TRIES = 5


@dataclass(frozen=True)
class TenantTurn:
    tenant_id: str
    running: int
    limits: Limits
    last_claimed_at: float

    def key(self, preferred_tenant: str | None) -> tuple[float, float, bool]:
        share = self.running / max(self.limits.priority, 1e-6)
        return (share, self.last_claimed_at, self.tenant_id != preferred_tenant)


def _claimable() -> ColumnElement[bool]:
    """Queued, and not deferred: a job held back after an environment error waits for its
    ``retry_at`` (worker/errors.py's EnvironmentFault)."""
    ts = now()
    return and_(Job.status == JobStatus.QUEUED, or_(Job.retry_at.is_(None), Job.retry_at <= ts))


def claim_next(
    session: Session, worker_id: str, *, settings: Settings, preferred: str | None = None
) -> Claim | None:
    """Claim the fairest queued job of the same kind as ``preferred`` (the job the message
    named). ``None``: nothing of that kind is queued, or every such tenant is at its limit."""
    kind, preferred_tenant = _kind_and_tenant(session, preferred)
    for _ in range(CLAIM_TRIES):
        turns = fair_order(session, kind=kind, settings=settings, preferred_tenant=preferred_tenant)
        if not turns:
            return None
        for turn in turns:
            job_id = _pick_job(session, turn.tenant_id, kind=kind, preferred=preferred)
            if job_id is None:
                continue
            claim = _claim_within_limit(session, job_id, turn, worker_id)
            if claim is not None:
                return claim
            break  # lost a race: look again with fresh counts
    return None


def fair_order(
    session: Session, *, kind: str, settings: Settings, preferred_tenant: str | None = None
) -> list[TenantTurn]:
    """Tenants with queued jobs of ``kind`` and room under their running limit, fairest first."""
    queued_tenants = list(
        session.scalars(
            select(Job.tenant_id).where(_claimable(), Job.kind == kind).group_by(Job.tenant_id)
        )
    )
    if not queued_tenants:
        return []
    running = dict(
        session.execute(
            select(Job.tenant_id, func.count())
            .where(Job.status == JobStatus.RUNNING, Job.tenant_id.in_(queued_tenants))
            .group_by(Job.tenant_id)
        ).all()
    )
    turns = []
    for tenant_id, policy, last in session.execute(
        select(Tenant.id, Tenant.policy, Tenant.last_claimed_at).where(
            Tenant.id.in_(queued_tenants)
        )
    ):
        limits = limits_for(policy, settings=settings)
        count = int(running.get(tenant_id, 0))
        if limits.max_running_jobs and count >= limits.max_running_jobs:
            continue
        turns.append(TenantTurn(tenant_id, count, limits, float(last or 0.0)))
    return sorted(turns, key=lambda t: t.key(preferred_tenant))


def next_for_tenant(session: Session, tenant_id: str, *, kind: str) -> str | None:
    """The tenant's oldest queued job of ``kind``: what a worker re-sends when one of the
    tenant's jobs ends, since the message of a job blocked by the running limit was used up."""
    return _pick_job(session, tenant_id, kind=kind, preferred=None)


def _kind_and_tenant(session: Session, job_id: str | None) -> tuple[str, str | None]:
    row = None
    if job_id is not None:
        row = session.execute(select(Job.kind, Job.tenant_id).where(Job.id == job_id)).first()
    return (str(row[0]), str(row[1])) if row is not None else ("fine_tune", None)


def _pick_job(session: Session, tenant_id: str, *, kind: str, preferred: str | None) -> str | None:
    if preferred is not None:
        found = session.scalar(
            select(Job.id).where(
                Job.id == preferred,
                Job.tenant_id == tenant_id,
                _claimable(),
                Job.kind == kind,
            )
        )
        if found is not None:
            return str(found)
    head = session.scalar(
        select(Job.id)
        .where(Job.tenant_id == tenant_id, _claimable(), Job.kind == kind)
        .order_by(Job.enqueued_at, Job.seq)
        .limit(1)
    )
    return str(head) if head is not None else None


def _claim_within_limit(
    session: Session, job_id: str, turn: TenantTurn, worker_id: str
) -> Claim | None:
    # The tenant's row lock makes "count running, then claim" atomic across workers on
    # PostgreSQL: a second worker's count starts after the first one's claim committed.
    session.execute(select(Tenant.seq).where(Tenant.id == turn.tenant_id).with_for_update())
    conditions = [Job.id == job_id, _claimable()]
    if turn.limits.max_running_jobs:
        other = aliased(Job)
        running = (
            select(func.count())
            .select_from(other)
            .where(other.tenant_id == turn.tenant_id, other.status == JobStatus.RUNNING)
            .scalar_subquery()
        )
        conditions.append(running < turn.limits.max_running_jobs)
    ts = now()
    result: Any = session.execute(
        update(Job)
        .where(*conditions)
        .values(
            status=JobStatus.RUNNING,
            attempt=Job.attempt + 1,
            worker_id=worker_id,
            heartbeat_at=ts,
            started_at=func.coalesce(Job.started_at, ts),
        )
        .execution_options(synchronize_session=False)
    )
    if int(result.rowcount) != 1:
        return None
    session.execute(
        update(Tenant)
        .where(Tenant.id == turn.tenant_id)
        .values(last_claimed_at=time.time())
        .execution_options(synchronize_session=False)
    )
    attempt = session.execute(select(Job.attempt).where(Job.id == job_id)).scalar_one()
    return Claim(job_id=job_id, attempt=attempt, worker_id=worker_id)
