"""Dashboard benchmark: server time and HTML size of the heaviest pages.

For each layout (SQLite file; PostgreSQL in a throw-away database on 127.0.0.1:5432, vacuumed
and analysed after loading, as autovacuum would) the script writes one job with 10,000 metric
events (a step event per step, and at every 100th step a checkpoint event and a safety event, as
worker/reporting.py writes them) plus 10,000 other jobs of mixed status and kind, signs in, and
then times each page in-process (TestClient: the server's work without a network) over
--requests requests after --warmup requests. Targets (issue 12): the job page under 150 ms and
300 kB.

Run: .venv/bin/python bench/dashboard.py [--events 10000] [--jobs 10000] [--requests 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import create_engine, insert, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from api.main import create_app  # noqa: E402
from bench.common import command_line, cpu_model, utc_now  # noqa: E402
from core import migrate  # noqa: E402
from core.accounts import create_key  # noqa: E402
from core.config import Settings  # noqa: E402
from core.db import engine_for, session_factory, session_scope  # noqa: E402
from core.models import File, Job, JobEvent, Tenant, new_id, now  # noqa: E402

PG_ADMIN_URL = os.environ.get(
    "FTAAS_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SECRET = "bench-secret"
TARGET_MS, TARGET_KB = 150.0, 300.0
STATUSES = ["queued", "running", "succeeded", "succeeded", "succeeded", "failed", "cancelled"]
ERRORS = ["safety_gate", "invalid_training_file", "worker_lost", "out_of_memory"]


def _events(job_id: str, tenant_id: str, n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    step, ts = 0, now() - n * 10
    while len(rows) < n:
        step += 1
        ts += 10
        loss = 2.0 / (1 + step / 500) + random.uniform(-0.05, 0.05)
        data: dict[str, Any] = {
            "step": step,
            "total_steps": 20_000,
            "train_loss": loss,
            "tokens_per_second": 1500.0,
            "learning_rate": 1e-4,
            "epoch": 1 + step // 5000,
        }
        rows.append(_event(job_id, tenant_id, f"Step {step}/20000: loss={loss:.4f}", data, ts))
        if step % 100 == 0 and len(rows) + 2 <= n:
            rows.append(
                _event(job_id, tenant_id, f"Checkpoint saved at step {step}.", {"step": step}, ts)
            )
            safety = {
                "step": step,
                "harmful_score": 0.1 + step / 200_000,
                "over_refusal": 0.05,
                "validation_loss": loss + 0.1,
                "deployable": step < 8000,
            }
            rows.append(_event(job_id, tenant_id, f"Safety at step {step}.", safety, ts))
    return rows


def _event(
    job_id: str, tenant_id: str, message: str, data: dict[str, Any], ts: int
) -> dict[str, Any]:
    return {
        "id": new_id("ftevent"),
        "job_id": job_id,
        "tenant_id": tenant_id,
        "level": "info",
        "type": "metrics",
        "message": message,
        "data": data,
        "created_at": ts,
    }


def populate(settings: Settings, *, events: int, jobs: int) -> tuple[str, str]:
    """Returns (admin key, id of the job with ``events`` metric events)."""
    random.seed(0)
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        admin = create_key(session, tenant_name="provider", admin=True, secret=SECRET.encode())
        tenants = [Tenant(name=f"tenant-{i}") for i in range(20)]
        session.add_all(tenants)
        session.flush()
        file = File(
            tenant_id=tenants[0].id,
            filename="train.jsonl",
            purpose="fine-tune",
            bytes=1,
            sha256="0" * 64,
            storage_key="files/none.jsonl",
            status="processed",
        )
        session.add(file)
        session.flush()
        big = Job(
            tenant_id=tenants[0].id,
            model="base",
            training_file=file.id,
            status="running",
            seed=1,
            step=9_800,
            total_steps=20_000,
            heartbeat_at=now(),
            worker_id="host:1",
            safety={"start": {"harmful_score": 0.1, "over_refusal": 0.04}, "margin": 0.05},
        )
        session.add(big)
        session.flush()
        rows: list[dict[str, Any]] = []
        for i in range(jobs):
            status = random.choice(STATUSES)
            rows.append(
                {
                    "id": new_id("ftjob"),
                    "tenant_id": tenants[i % len(tenants)].id,
                    "model": random.choice(["base", "base-2"]),
                    "training_file": file.id,
                    "status": status,
                    "kind": "alignment" if i % 50 == 0 else "fine_tune",
                    "defense": random.choice(["antibody", "sft"]),
                    "seed": i,
                    "hyperparameters": {},
                    "resolved_hyperparameters": {},
                    "defense_params": {},
                    "method": "supervised",
                    "step": 0,
                    "attempt": 1,
                    "created_at": now() - i * 60,
                    "enqueued_at": now() - i * 60 if status == "queued" else None,
                    "heartbeat_at": now() - random.randint(0, 900) if status == "running" else None,
                    "worker_id": f"host:{i}" if status == "running" else None,
                    "finished_at": now() - i * 30 if status in ("failed", "succeeded") else None,
                    "error_code": random.choice(ERRORS) if status == "failed" else None,
                    "flagged_lines": (
                        [{"line": n, "weight": 0.1, "relative_weight": 0.2} for n in range(1, 6)]
                        if status == "succeeded" and i % 10 == 0
                        else None
                    ),
                }
            )
        session.execute(insert(Job), rows)
        session.execute(insert(JobEvent), _events(big.id, big.tenant_id, events))
        return admin, big.id


def backend_cpu_s(database: str | None) -> float:
    """CPU seconds used so far by the PostgreSQL server processes serving ``database`` (read
    from /proc: the server runs on this machine); 0 for SQLite, which runs in-process."""
    if database is None:
        return 0.0
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            pids = conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": database}
            ).scalars()
            total = 0
            for pid in pids:
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    finally:
        engine.dispose()
    return total / os.sysconf("SC_CLK_TCK")


def time_page(
    client: TestClient,
    path: str,
    *,
    warmup: int,
    requests: int,
    status: int = 200,
    database: str | None = None,
) -> dict[str, Any]:
    for _ in range(warmup):
        assert client.get(path).status_code == status, path
    times, cpu, size = [], [], 0
    db_before = backend_cpu_s(database)
    for _ in range(requests):
        start, start_cpu = time.perf_counter(), time.process_time()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
        assert response.status_code == status, path
        size = len(response.content)
    db_ms = (backend_cpu_s(database) - db_before) * 1000 / requests
    times.sort()
    points = sum(m.count(",") for m in re.findall(r'points="([^"]*)"', response.text))
    return {
        "median_ms": round(statistics.median(times), 2),
        "p90_ms": round(times[int(0.9 * (len(times) - 1))], 2),
        "min_ms": round(times[0], 2),
        "median_cpu_ms": round(statistics.median(cpu), 2),
        "db_server_cpu_ms": round(db_ms, 2) if database else None,
        "html_bytes": size,
        "chart_points": points,
    }


def run_layout(layout: str, url: str, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    migrate.upgrade(url)
    settings = Settings(
        home=home,
        database_url=url,
        key_secret=SECRET,
        _env_file=None,
    )
    started = time.perf_counter()
    admin, job_id = populate(settings, events=args.events, jobs=args.jobs)
    populate_s = time.perf_counter() - started
    if layout == "postgresql":
        # A running service's tables are analysed and vacuumed by autovacuum; freshly bulk-
        # inserted ones are not yet, and their plans and first reads would be unrepresentative.
        with create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
            for table in ("job_events", "jobs", "line_reviews"):
                conn.execute(text(f"VACUUM ANALYZE {table}"))
    results: dict[str, Any] = {
        "populate_s": round(populate_s, 1),
        "load_average_1min_before": round(os.getloadavg()[0], 2),
        "pages": {},
    }
    with TestClient(create_app(settings), follow_redirects=False) as client:
        response = client.post(
            "/dashboard/login", data={"api_key": admin}, headers={"Origin": "http://testserver"}
        )
        assert response.status_code == 303
        pages = {
            f"job page ({args.events:,} metric events)": f"/dashboard/jobs/{job_id}",
            "job page live fragment": f"/dashboard/jobs/{job_id}/live",
            f"overview ({args.jobs + 1:,} jobs)": "/dashboard/",
            "jobs list, first page": "/dashboard/jobs",
            "jobs list, filtered (failed, safety_gate)": (
                "/dashboard/jobs?status=failed&error_code=safety_gate"
            ),
            "review (all flagged lines)": "/dashboard/review?show=all",
        }
        live = client.get(f"/dashboard/jobs/{job_id}/live").text
        since = re.search(r'live\?since=([^"]+)"', live)
        assert since is not None
        pages["job page live fragment, nothing new (204)"] = (
            f"/dashboard/jobs/{job_id}/live?since={since.group(1)}"
        )
        for name, path in pages.items():
            results["pages"][name] = time_page(
                client,
                path,
                warmup=args.warmup,
                requests=args.requests,
                status=204 if "(204)" in name else 200,
                database=make_url(url).database if layout == "postgresql" else None,
            )
            print(layout, name, results["pages"][name], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "command": command_line(),
        "date": utc_now(),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs visible (shared), "
        f"Python {platform.python_version()}",
        "targets": {"job_page_ms": TARGET_MS, "job_page_kb": TARGET_KB},
        "layouts": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "sqlite"
        home.mkdir()
        url = f"sqlite:///{home / 'ftaas.db'}"
        results["layouts"]["sqlite"] = run_layout("sqlite", url, home, args)
        name = f"ftaas_bench_{secrets.token_hex(4)}"
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        pg_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        try:
            pg_home = Path(tmp) / "pg"
            pg_home.mkdir()
            results["layouts"]["postgresql"] = run_layout("postgresql", pg_url, pg_home, args)
        finally:
            engine_for.cache_clear()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dashboard.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "dashboard.md").write_text(report(results))
    print(f"wrote {args.out / 'dashboard.md'}")


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Dashboard benchmark: server time and HTML size",
        "",
        f"Command: `{results['command']}`  ",
        f"Date: {results['date']}  ",
        f"Machine: {results['machine']}",
        "",
        f"Target (issue 12): the job page under {TARGET_MS:.0f} ms and {TARGET_KB:.0f} kB.",
        "",
    ]
    for layout, data in results["layouts"].items():
        lines += [
            f"## {layout}",
            "",
            f"Data written in {data['populate_s']} s; 1-minute load average before timing: "
            f"{data['load_average_1min_before']} (on {os.cpu_count()} CPUs).",
            "",
            "| page | median ms | p90 ms | min ms | median app CPU ms | DB server CPU ms "
            "| HTML kB | chart points |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, page in data["pages"].items():
            lines.append(
                f"| {name} | {page['median_ms']} | {page['p90_ms']} | {page['min_ms']} | "
                f"{page['median_cpu_ms']} | "
                f"{'in process' if page['db_server_cpu_ms'] is None else page['db_server_cpu_ms']} | "
                f"{page['html_bytes'] / 1000:.1f} | "
                f"{page['chart_points']:,} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
