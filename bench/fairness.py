"""Fair scheduling benchmark: how long a small tenant's job waits behind a large tenant's backlog.

Simulated claims on a real database (the real claim code and SQL, no training): tenant "big"
queues --backlog jobs at t=0, tenant "small" queues one job at --small-at minutes; --workers
workers each run one job at a time for a fixed --job-minutes. Messages are sent in creation
order, as the API sends them. Three schedulers:

* ``fifo``: the claim before fair scheduling (``core.jobs.claim`` of the job the message names);
* ``fair``: ``core.scheduling.claim_next`` with no running limit;
* ``fair+limit``: ``claim_next`` with the default running limit per tenant (a message that
  finds every tenant at its limit is dropped; the worker re-sends the tenant's next job when one
  of its jobs ends, as worker/runner.py does).

Reported per scheduler: the small job's wait (simulated minutes, and job slots: claims made
between its submission and its start), and the big tenant's mean and last completion time.

Run: .venv/bin/python bench/fairness.py [--postgres] [--backlog 100] [--workers 4]
"""

from __future__ import annotations

import argparse
import heapq
import json
import platform
import secrets
import shlex
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import select  # noqa: E402

from core import jobs, migrate  # noqa: E402
from core.accounts import get_or_create_tenant  # noqa: E402
from core.config import Settings  # noqa: E402
from core.db import engine_for, session_factory, session_scope  # noqa: E402
from core.models import Base, File, Job  # noqa: E402
from core.scheduling import claim_next, next_for_tenant  # noqa: E402

SCHEDULERS = ("fifo", "fair", "fair+limit")


def _reset(url: str) -> None:
    with engine_for(url).begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


def _queue(factory: Any, tenant: str, n: int) -> list[str]:
    with session_scope(factory) as session:
        row = get_or_create_tenant(session, tenant)
        f = File(
            tenant_id=row.id,
            filename="t.jsonl",
            purpose="fine-tune",
            bytes=1,
            sha256="0" * 64,
            storage_key="files/x.jsonl",
            status="processed",
        )
        session.add(f)
        session.flush()
        batch = [
            Job(tenant_id=row.id, model="m", training_file=f.id, status="queued", seed=1)
            for _ in range(n)
        ]
        session.add_all(batch)
        session.flush()
        ids = [j.id for j in batch]
        # enqueued_at orders a tenant's own jobs; seconds are too coarse for a burst, so use seq.
        for i, job in enumerate(batch):
            job.enqueued_at = i
        return ids


def simulate(scheduler: str, *, url: str, args: argparse.Namespace) -> dict[str, Any]:
    _reset(url)
    limit = args.running_limit if scheduler == "fair+limit" else 0
    settings = Settings(
        database_url=url,
        max_running_jobs_per_tenant=limit,
        _env_file=None,
    )
    factory = session_factory(url)
    messages: deque[str] = deque(_queue(factory, "big", args.backlog))
    small_id: str | None = None
    clock = 0.0
    free = list(range(args.workers))
    running: list[tuple[float, int, str]] = []  # (ends at, worker, job id)
    started: dict[str, float] = {}
    finished: dict[str, float] = {}
    claims = 0
    small_slot = -1
    claims_at_submit = 0
    wall = time.perf_counter()
    while True:
        if small_id is None and clock >= args.small_at:
            (small_id,) = _queue(factory, "small", 1)
            messages.append(small_id)
            claims_at_submit = claims
        while free and messages:
            message = messages.popleft()
            with session_scope(factory) as session:
                if scheduler == "fifo":
                    claim = jobs.claim(session, message, "sim")
                else:
                    claim = claim_next(session, "sim", settings=settings, preferred=message)
            if claim is None:
                continue
            worker = free.pop()
            claims += 1
            started[claim.job_id] = clock
            if claim.job_id == small_id:
                small_slot = claims - claims_at_submit
            heapq.heappush(running, (clock + args.job_minutes, worker, claim.job_id))
        next_end = running[0][0] if running else None
        if small_id is None and (next_end is None or next_end > args.small_at):
            clock = args.small_at  # the small tenant's job arrives before the next job ends
            continue
        if next_end is None:
            break
        ends, worker, job_id = heapq.heappop(running)
        clock = ends
        free.append(worker)
        finished[job_id] = clock
        with session_scope(factory) as session:
            job = session.scalar(select(Job).where(Job.id == job_id))
            assert job is not None
            job.status = "succeeded"
            tenant_id = job.tenant_id
            session.flush()
            if scheduler != "fifo":
                follow = next_for_tenant(session, tenant_id, kind="fine_tune")
                if follow is not None:
                    messages.append(follow)
    assert small_id is not None
    big = [finished[j] for j in finished if j != small_id]
    return {
        "scheduler": scheduler,
        "running_limit": limit or None,
        "small_wait_minutes": round(started[small_id] - args.small_at, 2),
        "small_wait_slots": small_slot,
        "big_mean_finish_minutes": round(sum(big) / len(big), 2),
        "big_last_finish_minutes": round(max(big), 2),
        "jobs_run": len(finished),
        "sim_wall_s": round(time.perf_counter() - wall, 2),
    }


@contextmanager
def _database(args: argparse.Namespace, tmp: str) -> Iterator[str]:
    """A temporary SQLite file, or with --postgres a throw-away PostgreSQL database."""
    if not args.postgres:
        yield f"sqlite:///{tmp}/fairness.db"
        return
    from sqlalchemy import create_engine, text

    name = f"ftaas_fairness_{secrets.token_hex(4)}"
    admin = create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield args.pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--postgres", action="store_true", help="A throw-away PostgreSQL database, not SQLite."
    )
    parser.add_argument(
        "--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--backlog", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--job-minutes", type=float, default=10.0)
    parser.add_argument("--small-at", type=float, default=1.0)
    parser.add_argument("--running-limit", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "fairness"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, _database(args, tmp) as url:
        migrate.upgrade(url)
        rows = [simulate(s, url=url, args=args) for s in SCHEDULERS]
        engine_for(url).dispose()
    backend = "postgresql" if args.postgres else "sqlite"
    command = ".venv/bin/python bench/fairness.py " + shlex.join(sys.argv[1:])
    result = {
        "command": command.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "database": backend,
        "backlog": args.backlog,
        "workers": args.workers,
        "job_minutes": args.job_minutes,
        "small_submitted_at_minutes": args.small_at,
        "python": platform.python_version(),
        "rows": rows,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Fair scheduling: a small tenant's job behind a large backlog",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Database: {backend} (real claims and SQL, simulated clock, no training). Tenant big "
        f"queues {args.backlog} jobs at t=0; tenant small queues 1 job at t={args.small_at:g} "
        f"min; {args.workers} workers; every job runs {args.job_minutes:g} min.",
        "",
        "| scheduler | running limit | small job's wait (min) | its wait (claims) "
        "| big: mean finish (min) | big: last finish (min) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scheduler']} | {r['running_limit'] or 'none'} | {r['small_wait_minutes']} | "
            f"{r['small_wait_slots']} | {r['big_mean_finish_minutes']} | "
            f"{r['big_last_finish_minutes']} |"
        )
    lines += [
        "",
        "`fifo` is the claim before fair scheduling (each message claims the job it names); "
        "`fair` and `fair+limit` use `core.scheduling.claim_next`. Claims (slots) are counted "
        "from the small job's submission to its start, its own claim included.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
