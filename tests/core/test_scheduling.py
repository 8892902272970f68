"""Fair claims: a small tenant's job is not starved by a large tenant's backlog, priorities and
running limits hold, and one message still claims at most one job."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core import jobs
from core.accounts import get_or_create_tenant
from core.config import Settings
from core.models import File, Job, Tenant, now
from core.scheduling import claim_next, next_for_tenant


def _queue(factory: sessionmaker[Session], tenant: str, n: int, *, policy: dict | None = None) -> list[str]:  # fmt: skip
    with factory.begin() as session:
        row = get_or_create_tenant(session, tenant)
        if policy is not None:
            row.policy = policy
        f = File(
            tenant_id=row.id, filename="t.jsonl", purpose="fine-tune", bytes=1, sha256="0" * 64,
            storage_key="files/x.jsonl", status="processed",
        )  # fmt: skip
        session.add(f)
        session.flush()
        batch = [
            Job(tenant_id=row.id, model="m", training_file=f.id, status="queued", seed=1,
                enqueued_at=now())
            for _ in range(n)
        ]  # fmt: skip
        session.add_all(batch)
        session.flush()
        return [j.id for j in batch]


def _claim(factory: sessionmaker[Session], settings: Settings, preferred: str) -> jobs.Claim | None:  # fmt: skip
    with factory.begin() as s:
        return claim_next(s, "w", settings=settings, preferred=preferred)


def _tenant_of(factory: sessionmaker[Session], job_id: str) -> str:
    with factory.begin() as s:
        return str(
            s.scalar(select(Tenant.name).join(Job, Job.tenant_id == Tenant.id).where(Job.id == job_id))
        )  # fmt: skip


def test_small_tenant_is_claimed_within_two_claims(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    big = _queue(session_factory, "big", 100)
    (small,) = _queue(session_factory, "small", 1)
    # The messages arrive in creation order: big's 100 first. The second one already runs small's.
    claimed = [_claim(session_factory, settings, big[i]) for i in range(2)]
    assert [c.job_id for c in claimed if c] == [big[0], small]


def test_round_robin_when_nothing_runs(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    a = _queue(session_factory, "a", 6)
    _queue(session_factory, "b", 6)
    order = []
    for i in range(6):
        claim = _claim(session_factory, settings, a[i])
        assert claim is not None
        order.append(_tenant_of(session_factory, claim.job_id))
        with session_factory.begin() as s:  # the job ends at once: nothing stays running
            job = s.scalar(select(Job).where(Job.id == claim.job_id))
            assert job is not None
            jobs.cancel(s, job)
    assert order == ["a", "b", "a", "b", "a", "b"]


def test_priority_weights_running_share(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    low = _queue(session_factory, "low", 10, policy={"max_running_jobs": 0})
    _queue(session_factory, "high", 10, policy={"priority": 3, "max_running_jobs": 0})
    names = [_tenant_of(session_factory, c.job_id) for c in
             (_claim(session_factory, settings, low[i]) for i in range(8)) if c]  # fmt: skip
    assert names.count("high") == 6 and names.count("low") == 2


def test_running_limit_is_enforced_at_claim(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    ids = _queue(session_factory, "capped", 5, policy={"max_running_jobs": 2})
    claims = [_claim(session_factory, settings, i) for i in ids]
    assert sum(c is not None for c in claims) == 2
    with session_factory.begin() as s:
        assert s.scalar(select(func.count()).where(Job.status == "running")) == 2


def test_concurrent_claims_never_exceed_the_limit_nor_double_claim(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    ids = _queue(session_factory, "race", 12, policy={"max_running_jobs": 3})

    def one(i: int) -> str | None:
        with session_factory.begin() as s:
            claim = claim_next(s, f"w{i}", settings=settings, preferred=ids[i])
            return claim.job_id if claim else None

    with ThreadPoolExecutor(6) as pool:
        got = [j for j in pool.map(one, range(12)) if j]
    assert len(got) == len(set(got)) == 3


def test_a_message_claims_at_most_one_job(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    (only,) = _queue(session_factory, "solo", 1)
    assert _claim(session_factory, settings, only) is not None
    assert _claim(session_factory, settings, only) is None  # a duplicate delivery does nothing


def test_next_for_tenant_is_its_oldest_queued_job(
    session_factory: sessionmaker[Session], settings: Settings
) -> None:
    ids = _queue(session_factory, "t", 3)
    with session_factory.begin() as s:
        tenant_id = s.scalar(select(Job.tenant_id).where(Job.id == ids[0]))
        assert next_for_tenant(s, str(tenant_id), kind="fine_tune") == ids[0]
        assert next_for_tenant(s, str(tenant_id), kind="alignment") is None
