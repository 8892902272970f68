"""Ingest benchmark: JSONL validation throughput and memory, in-process and through HTTP.

1. Generates chat JSONL files (~10 MB and ~100 MB by default) under bench/cache/.
2. core.datasets: feeds each file in 1 MiB chunks to ``DatasetValidator``; reports MB/s (best of
   ``--repeats``) and peak traced memory (tracemalloc, a separate pass) and the ru_maxrss growth.
3. HTTP: starts uvicorn (one process, embedded SQLite layout in a temporary FTAAS_HOME) and
   uploads each file to POST /v1/files as a streamed multipart body; reports MB/s end to end
   (upload + validation + SHA-256 + write to the artifact store) and the server's peak RSS
   (VmHWM) before and after, so memory growth per file size is visible.

Run: .venv/bin/python bench/ingest.py [--sizes-mb 10 100] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.datasets import DatasetLimits, DatasetValidator  # noqa: E402

CACHE = REPO / "bench" / "cache"
CHUNK = 1 << 20
WORDS = (
    "model data train loss token batch epoch safety answer question policy gradient weight "
    "layer adapter checkpoint the a of to and in is for on with that this as be are was"
).split()
LIMITS = DatasetLimits(max_line_bytes=1 << 20, max_lines=10**8, min_examples=10)


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choices(WORDS, k=n_words)).capitalize() + "."


def generate(path: Path, size_mb: int, seed: int = 0) -> dict[str, Any]:
    """Write a chat JSONL file of about ``size_mb`` MB, line by line (bounded memory)."""
    if path.exists() and path.stat().st_size >= size_mb * 1_000_000:
        with path.open("rb") as fh:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(CHUNK), b""))
        return {"path": str(path), "bytes": path.stat().st_size, "lines": lines}
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = lines = 0
    with path.open("w", encoding="utf-8") as fh:
        while written < size_mb * 1_000_000:
            turns = [{"role": "system", "content": "You are a helpful assistant."}]
            for _ in range(rng.randint(1, 3)):
                turns.append({"role": "user", "content": _text(rng, rng.randint(8, 60))})
                turns.append({"role": "assistant", "content": _text(rng, rng.randint(20, 200))})
            line = json.dumps({"messages": turns}, ensure_ascii=False) + "\n"
            fh.write(line)
            written += len(line.encode())
            lines += 1
    return {"path": str(path), "bytes": path.stat().st_size, "lines": lines}


def chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def maxrss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def bench_core(path: Path, repeats: int) -> dict[str, Any]:
    size = path.stat().st_size
    for _ in chunks(path):  # warm the page cache so the first timed pass reads from memory too
        pass
    rss_before = maxrss_kb()
    times = []
    for _ in range(repeats):
        validator = DatasetValidator(LIMITS)
        start = time.perf_counter()
        for chunk in chunks(path):
            validator.feed(chunk)
        report = validator.finish()
        times.append(time.perf_counter() - start)
        assert report.ok, report.summary()
    rss_after = maxrss_kb()
    tracemalloc.start()
    validator = DatasetValidator(LIMITS)
    for chunk in chunks(path):
        validator.feed(chunk)
    validator.finish()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    best = min(times)
    return {
        "file_mb": round(size / 1e6, 1),
        "examples": report.n_examples,
        "seconds_best": round(best, 3),
        "seconds_all": [round(t, 3) for t in times],
        "mb_per_s": round(size / 1e6 / best, 1),
        "tracemalloc_peak_kib": round(peak / 1024, 1),
        "ru_maxrss_growth_kib": rss_after - rss_before,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _multipart(path: Path, boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    yield from chunks(path)
    yield f"\r\n--{boundary}--\r\n".encode()


def bench_http(paths: list[Path], repeats: int) -> dict[str, Any]:
    from core import migrate
    from core.accounts import create_key
    from core.db import session_factory, session_scope

    home = Path(tempfile.mkdtemp(prefix="ftaas-ingest-"))
    env = {
        **os.environ,
        "FTAAS_HOME": str(home),
        "FTAAS_KEY_SECRET": "bench-secret",
        "FTAAS_MAX_LINES": str(10**8),
    }
    url = f"sqlite:///{home / 'ftaas.db'}"
    migrate.upgrade(url)
    with session_scope(session_factory(url)) as session:
        key = create_key(session, tenant_name="bench", admin=False, secret=b"bench-secret")
    port = _free_port()
    cmd = [
        sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(cmd, cwd=REPO, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
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
        results = []
        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "multipart/form-data; boundary=benchboundary",
        }
        with httpx.Client(timeout=600) as client:
            for path in paths:
                hwm_before = _vm(server.pid, "VmHWM")
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    response = client.post(
                        f"{base}/v1/files",
                        headers=headers,
                        content=_multipart(path, "benchboundary"),
                    )
                    times.append(time.perf_counter() - start)
                    body = response.json()
                    assert response.status_code == 200 and body["status"] == "processed", body
                size = path.stat().st_size
                best = min(times)
                results.append(
                    {
                        "file_mb": round(size / 1e6, 1),
                        "examples": body["n_examples"],
                        "seconds_best": round(best, 3),
                        "seconds_all": [round(t, 3) for t in times],
                        "mb_per_s": round(size / 1e6 / best, 1),
                        "server_vmhwm_before_kib": hwm_before,
                        "server_vmhwm_after_kib": _vm(server.pid, "VmHWM"),
                        "server_vmrss_after_kib": _vm(server.pid, "VmRSS"),
                    }
                )
        return {"server": " ".join(cmd[1:]).replace(str(port), "<port>"), "uploads": results}
    finally:
        server.terminate()
        server.wait(timeout=30)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus_visible": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "json_parser": "stdlib json",
    }


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    lines = [
        "# Ingest benchmark",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cpus_visible']} CPUs visible "
        f"(shared with other work), Python {result['machine']['python']}, stdlib json.",
        "",
        "Files: generated chat JSONL, "
        + ", ".join(
            f"{f['bytes'] / 1e6:.0f} MB = {f['lines']:,} lines (~{f['bytes'] // f['lines']:,} B/line)"
            for f in result["files"]
        )
        + ".",
        "",
        "## core.datasets validation (in-process, 1 MiB chunks)",
        "",
        "| file | examples | best s | MB/s | tracemalloc peak | ru_maxrss growth |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["core"]:
        lines.append(
            f"| {r['file_mb']} MB | {r['examples']:,} | {r['seconds_best']} | {r['mb_per_s']} | "
            f"{r['tracemalloc_peak_kib']:,} KiB | {r['ru_maxrss_growth_kib']:,} KiB |"
        )
    if result.get("http"):
        lines += [
            "",
            "## POST /v1/files through uvicorn (streamed multipart, loopback)",
            "",
            f"Server: `{result['http']['server']}` (one process, SQLite layout).",
            "",
            "| file | examples | best s | MB/s | server peak RSS before → after |",
            "|---|---|---|---|---|",
        ]
        for r in result["http"]["uploads"]:
            lines.append(
                f"| {r['file_mb']} MB | {r['examples']:,} | {r['seconds_best']} | {r['mb_per_s']} | "
                f"{r['server_vmhwm_before_kib'] / 1024:.1f} → {r['server_vmhwm_after_kib'] / 1024:.1f} MiB |"
            )
    lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    files = [generate(CACHE / f"chat_{mb}mb.jsonl", mb) for mb in args.sizes_mb]
    paths = [Path(f["path"]) for f in files]
    core = [bench_core(p, args.repeats) for p in paths]
    for r in core:
        print("core", r)
    http = None if args.no_http else bench_http(paths, args.repeats)
    if http:
        for r in http["uploads"]:
            print("http", r)
    result = {
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "files": files,
        "core": core,
        "http": http,
        "notes": [
            "Throughput is the best of the repeats; the files are in the page cache.",
            "tracemalloc peak is the validator's own allocations for the whole file; it stays "
            "flat as the file grows (bounded by one line plus one chunk).",
            "HTTP figures include the client generating the multipart stream on the same "
            "machine, SHA-256, validation and the fsync'd write to the artifact store.",
            "max_lines is raised for the benchmark so every line is checked (the default stops "
            "checking after 100,000 examples).",
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(args.out / "ingest.md", result)


if __name__ == "__main__":
    main()
