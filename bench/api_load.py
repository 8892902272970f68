"""API load benchmark: job-status polling on the production layout.

PostgreSQL (a fresh throw-away database) + Redis, the app under uvicorn with 2 worker processes on
127.0.0.1, one job created through the API. Then N concurrent pollers (httpx async, one
connection each, keep-alive) call GET /v1/fine_tuning/jobs/{id} until a request budget or a time
budget runs out. Reports requests/s, latency percentiles and errors per N, and the load
generator's own CPU time (it shares the machine's cores with the server).

Run: .venv/bin/python bench/api_load.py [--pollers 1 10 50] [--seconds 10] [--max-requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PG_ADMIN_URL = os.environ.get(
    "FTAAS_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("FTAAS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
SECRET = "bench-secret"
MODEL = "bench-base-model"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chat_jsonl(n: int) -> bytes:
    line = {
        "messages": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
        ]
    }
    return (json.dumps(line) + "\n").encode() * n


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def server_cpu_s(root: int) -> float:
    """CPU seconds used so far by ``root`` and its children (uvicorn's worker processes)."""
    total = _proc_cpu_s(root)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == root:
                total += _proc_cpu_s(int(entry.name))
    return total


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def poll(
    url: str, headers: dict[str, str], pollers: int, seconds: float, budget: int
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=pollers, max_keepalive_connections=pollers)

    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def poller() -> None:
            nonlocal sent
            while sent < budget and time.perf_counter() < deadline:
                sent += 1
                start = time.perf_counter()
                try:
                    response = await client.get(url, headers=headers)
                    if response.status_code != 200:
                        errors[str(response.status_code)] = (
                            errors.get(str(response.status_code), 0) + 1
                        )
                        continue
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - start)

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        await asyncio.gather(*(poller() for _ in range(pollers)))
        elapsed = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)

    latencies.sort()
    ms = [x * 1000 for x in latencies]
    return {
        "pollers": pollers,
        "requests_ok": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": {
            "p50": round(percentile(ms, 50), 2),
            "p90": round(percentile(ms, 90), 2),
            "p99": round(percentile(ms, 99), 2),
            "max": round(ms[-1], 2) if ms else None,
            "mean": round(statistics.fmean(ms), 2) if ms else None,
        },
        "load_generator_cpu_s": round(
            (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime), 2
        ),
    }


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cpus_visible": os.cpu_count(), "python": platform.python_version()}


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    lines = [
        "# API load benchmark: GET /v1/fine_tuning/jobs/{id}",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cpus_visible']} CPUs visible, "
        f"shared by the server, PostgreSQL, Redis and the load generator; Python "
        f"{result['machine']['python']}.  ",
        f"Server: `{result['server']}` against PostgreSQL + Redis on loopback.",
        "",
        "| pollers | requests ok | errors | req/s | p50 ms | p90 ms | p99 ms | max ms "
        "| CPU s: uvicorn / generator / wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['pollers']} | {r['requests_ok']:,} | {sum(r['errors'].values())} | "
            f"{r['requests_per_s']} | {lat['p50']} | {lat['p90']} | {lat['p99']} | {lat['max']} | "
            f"{r['server_cpu_s']} / {r['load_generator_cpu_s']} / {r['seconds']} |"
        )
    lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, nargs="+", default=[1, 10, 25, 50])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    import redis
    from sqlalchemy import create_engine, text

    from core import migrate
    from core.accounts import create_key
    from core.db import engine_for, session_factory, session_scope
    from core.models import Model

    db_name = f"ftaas_bench_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    db_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db_name}"
    home = Path(tempfile.mkdtemp(prefix="ftaas-load-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        migrate.upgrade(db_url)
        with session_scope(session_factory(db_url)) as session:
            key = create_key(session, tenant_name="bench", admin=False, secret=SECRET.encode())
            session.add(Model(id=MODEL, source="builtin", status="ready"))
        engine_for(db_url).dispose()

        port = _free_port()
        env = {
            **os.environ,
            "FTAAS_HOME": str(home),
            "FTAAS_DATABASE_URL": db_url,
            "FTAAS_BROKER_URL": REDIS_URL,
            "FTAAS_KEY_SECRET": SECRET,
        }
        cmd = [
            sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers),
            "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        server = subprocess.Popen(cmd, cwd=REPO, env=env)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)

        headers = {"Authorization": f"Bearer {key}"}
        uploaded = httpx.post(
            f"{base}/v1/files",
            headers=headers,
            files={"file": ("train.jsonl", _chat_jsonl(20))},
            data={"purpose": "fine-tune"},
        ).json()
        job = httpx.post(
            f"{base}/v1/fine_tuning/jobs",
            headers=headers,
            json={"model": MODEL, "training_file": uploaded["id"]},
        ).json()
        url = f"{base}/v1/fine_tuning/jobs/{job['id']}"

        asyncio.run(poll(url, headers, 4, 1.0, 500))  # warm up both workers' pools
        runs = []
        for n in args.pollers:
            cpu_before = server_cpu_s(server.pid)
            run = asyncio.run(poll(url, headers, n, args.seconds, args.max_requests))
            run["server_cpu_s"] = round(server_cpu_s(server.pid) - cpu_before, 2)
            print(run)
            runs.append(run)
        result = {
            "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine(),
            "server": " ".join(cmd[1:]).replace(str(port), "<port>"),
            "layout": {"database": "postgresql (fresh database)", "broker": "redis"},
            "runs": runs,
            "notes": [
                "Each poller is one keep-alive connection issuing requests back to back (no think "
                "time); a run stops at --seconds or --max-requests in total, whichever first.",
                "Each request authenticates (HMAC of the key, one indexed lookup joined to the "
                "tenant) and reads the job by id scoped to the tenant: two queries.",
                "The load generator runs on the same 2 cores as uvicorn, PostgreSQL and Redis; "
                "the CPU seconds used by uvicorn's processes and by the generator are shown "
                "against the run's wall seconds (2 cores = 2 CPU-seconds per second; PostgreSQL "
                "takes most of the rest). From about 25 pollers the httpx generator itself needs "
                "most of a core, so the server gets less: these figures are a floor for a "
                "deployment where clients run elsewhere.",
            ],
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "api_load.json").write_text(json.dumps(result, indent=2) + "\n")
        write_markdown(args.out / "api_load.md", result)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
        redis.Redis.from_url(REDIS_URL).delete("training", "_kombu.binding.training")


if __name__ == "__main__":
    main()
