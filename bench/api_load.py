"""API load benchmark: job-status polling on the production layout, driven by wrk.

PostgreSQL (a fresh throw-away database) + Redis, the app under uvicorn (--workers processes,
httptools and uvloop) on 127.0.0.1, one job created through the API. Then wrk, a C load
generator, holds N keep-alive connections busy against GET /v1/fine_tuning/jobs/{id} with the
tenant's key (auth, rate limit and one indexed query per request), and against /healthz (no
auth, one ``SELECT 1``) in the same run as the ceiling. Rows go to bench/results/api_load.json
as {"generator", "endpoint", "connections", "rps", "p50_ms", "p99_ms"} (plus p90, max, errors).

The per-key rate limit stays on (its Redis script runs on every request) but is raised for the
run (FTAAS_RATE_LIMIT_RPS, FTAAS_RATE_LIMIT_BURST below) so that one key may poll this fast.

Install wrk (Debian/Ubuntu): ``apt-get install -y wrk``.
Run: .venv/bin/python bench/api_load.py [--connections 10 50] [--seconds 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
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


WRK_SCRIPT = """
-- The key comes from the environment, so it never appears in the command line or the results.
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("FTAAS_BENCH_KEY") or "")

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def run_wrk(
    url: str, *, key: str, connections: int, seconds: float, threads: int, script: Path
) -> dict[str, Any]:
    """One wrk run; the Lua script's ``done`` prints the summary as one JSON line."""
    cmd = [
        "wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds:g}s",
        "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    out = subprocess.run(
        cmd, env={**os.environ, "FTAAS_BENCH_KEY": key}, capture_output=True, text=True, check=True
    ).stdout
    summary = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    seconds_run = summary["duration_us"] / 1e6
    ok = summary["requests"] - summary["non_2xx"]
    return {
        "requests": summary["requests"],
        "non_2xx": summary["non_2xx"],
        "socket_errors": summary["socket_errors"],
        "seconds": round(seconds_run, 2),
        "rps": round(ok / seconds_run, 1),
        "p50_ms": round(summary["p50_us"] / 1000, 2),
        "p90_ms": round(summary["p90_us"] / 1000, 2),
        "p99_ms": round(summary["p99_us"] / 1000, 2),
        "max_ms": round(summary["max_us"] / 1000, 2),
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
        "# API load benchmark: GET /v1/fine_tuning/jobs/{id} (with auth), /healthz as the ceiling",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cpus_visible']} CPUs visible, "
        f"shared by the server, PostgreSQL, Redis and wrk; Python "
        f"{result['machine']['python']}.  ",
        f"Server: `{result['server']}` against PostgreSQL + Redis on loopback.  ",
        f"Generator: `{result['generator_command']}`",
        "",
        "| endpoint | connections | requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        errors = r["non_2xx"] + r["socket_errors"]
        lines.append(
            f"| {r['endpoint']} | {r['connections']} | {r['requests']:,} | {errors} | {r['rps']} "
            f"| {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} |"
        )
    lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument(
        "--no-rate-limit", action="store_true", help="Diagnostics: run without the rate limit."
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")

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
    script = home / "auth.lua"
    script.write_text(WRK_SCRIPT)
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
            "FTAAS_RATE_LIMIT_RPS": "0" if args.no_rate_limit else "1000000",
            "FTAAS_RATE_LIMIT_BURST": "1000000",
        }
        cmd = [
            sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers),
            "--http", "httptools", "--loop", "uvloop",
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
        endpoints = {
            "/v1/fine_tuning/jobs/{id}": f"{base}/v1/fine_tuning/jobs/{job['id']}",
            "/healthz": f"{base}/healthz",
        }
        wrk = partial(run_wrk, key=key, threads=args.threads, script=script)
        for url in endpoints.values():  # warm up every worker's pools and caches
            wrk(url, connections=4, seconds=2)
        rows = []
        for connections in args.connections:
            for name, url in endpoints.items():
                cpu_before = server_cpu_s(server.pid)
                run = wrk(url, connections=connections, seconds=args.seconds)
                row = {
                    "generator": "wrk",
                    "endpoint": name,
                    "connections": connections,
                    **run,
                    "server_cpu_s": round(server_cpu_s(server.pid) - cpu_before, 2),
                }
                print(row, flush=True)
                rows.append(row)
        server_cmd = " ".join(cmd[1:]).replace(str(port), "<port>")
        result = {
            "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine(),
            "server": server_cmd,
            "generator_command": f"wrk -t{args.threads} -c<connections> -d{args.seconds:g}s "
            "--timeout 10s -s auth.lua <url>",
            "layout": {"database": "postgresql (fresh database)", "broker": "redis"},
            "rows": rows,
            "notes": [
                "wrk keeps each connection busy back to back (no think time); auth.lua (in "
                "bench/api_load.py) adds the Authorization header and prints the summary.",
                "The job route authenticates (a 2 s per-process key cache, FTAAS_AUTH_CACHE_TTL_S), "
                "takes a token from the key's Redis bucket (one Lua script), and reads the job by "
                "id scoped to the tenant (one indexed query). /healthz runs one SELECT 1 with no "
                "auth: the ceiling of this server on this machine.",
                "wrk, uvicorn, PostgreSQL and Redis share the same CPUs; server_cpu_s in the JSON "
                "is the CPU time of uvicorn's processes during each run.",
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
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
