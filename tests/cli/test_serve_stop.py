"""``ftaas serve`` stops every process it started, within 30 s, on SIGTERM and on SIGINT.

A real ``ftaas serve`` (the embedded default under a temporary FTAAS_HOME, no model preparation,
no first-start alignment): the API and its three Celery workers. Every descendant and every
process group it created is recorded before the signal, and none may be left afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.services import alive, descendants, free_port, in_groups, kill_tree

REPO = Path(__file__).resolve().parents[2]
STOP_LIMIT_S = 30.0
N_WORKERS = 3


def _serve_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTAAS_")}
    env.update(
        FTAAS_HOME=str(home),
        FTAAS_ALIGN_ON_FIRST_START="false",
        FTAAS_USE_SHIPPED_ADAPTERS="false",
        FTAAS_STOP_TIMEOUT_S="20",
        FTAAS_WORKER_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO),
    )
    return env


def _celery_mains(pid: int) -> set[int]:
    """The Celery worker processes directly under serve."""
    found = set()
    for child in descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            parent = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if b"celery" in cmdline and parent == pid:
            found.add(child)
    return found


def _start_serve(home: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = open(home.parent / f"serve-{port}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--no-prepare", "--port", str(port)],
        cwd=REPO,
        env=_serve_env(home),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (home.parent / f"serve-{port}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "ftaas serve did not come up in 120 s"
        try:
            up = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            up = False
        if up and len(_celery_mains(proc.pid)) == N_WORKERS:
            return proc, port
        time.sleep(0.3)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_serve_stops_every_process(tmp_path: Path, sig: signal.Signals) -> None:
    home = tmp_path / "home"
    proc, port = _start_serve(home)
    try:
        tree = descendants(proc.pid)
        groups = {os.getpgid(pid) for pid in alive(tree)}
        assert len(tree) >= 1 + N_WORKERS  # the API and the three workers (plus pool processes)
        started = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=STOP_LIMIT_S + 5)
        took = time.monotonic() - started
        assert took < STOP_LIMIT_S, f"serve took {took:.1f} s to stop"
        assert code == 0
        left = alive(tree) | in_groups(groups)
        assert not left, f"processes still running after serve exited: {sorted(left)}"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        kill_tree(proc.pid)
        proc.kill()


def test_serve_exits_nonzero_when_the_api_dies(tmp_path: Path) -> None:
    """The API is the service: if it dies, serve stops its workers and exits non-zero."""
    proc, _ = _start_serve(tmp_path / "home")
    try:
        tree = descendants(proc.pid)
        groups = {os.getpgid(pid) for pid in alive(tree)}
        workers = _celery_mains(proc.pid)
        api = next(
            pid
            for pid in tree
            if b"cli.main\x00api" in Path(f"/proc/{pid}/cmdline").read_bytes()
            and pid not in workers
        )
        os.kill(api, signal.SIGKILL)
        code = proc.wait(timeout=STOP_LIMIT_S + 5)
        assert code != 0
        assert not (alive(tree) | in_groups(groups))
    finally:
        kill_tree(proc.pid)
        proc.kill()
