"""Keeps this worker's row in the registry (core.workers): registered when the Celery worker is
ready, heartbeated by a daemon thread in the main process (also while idle), the current job set
by the pool process that runs it, marked stopped on a clean shutdown.

Choices:
* One row per Celery node (``training@host``): pool processes come and go (a fresh one per job,
  ``worker_max_tasks_per_child=1``), the node is what an operator starts and stops. The row's
  ``pid`` is the main process's; the job row's ``worker_id`` names the pool process.
* The device is read without initialising CUDA in the main process (which would break the
  forked pool processes): ``nvidia-smi`` when present, else ``cpu``.
* Memory is the resident set of the main process and its pool processes, against the host's
  total memory (from /proc; Linux only, None elsewhere).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
from importlib import metadata
from typing import Any

from celery import signals
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core import workers
from core.config import Settings, get_settings
from core.db import make_engine, session_factory, session_scope
from core.queue import TASK_RUN_JOB

log = logging.getLogger(__name__)


class _State:
    node: str | None = None
    engine: Engine | None = None
    stop = threading.Event()
    thread: threading.Thread | None = None


def _rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                out += [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        pass
    return out


def memory_used(pid: int | None = None) -> int | None:
    """Resident bytes of ``pid`` (default: this process) and its children."""
    pid = pid or os.getpid()
    own = _rss_bytes(pid)
    if own is None:
        return None
    return own + sum(_rss_bytes(child) or 0 for child in _children(pid))


def memory_total() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def describe_device(setting: str) -> str:
    """``cpu`` or ``cuda: <GPU name>`` without touching CUDA in this process."""
    if setting == "cpu":
        return "cpu"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "cpu" if setting == "auto" else setting
    index = setting.split(":", 1)[1] if setting.startswith("cuda:") else "0"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible and not setting.startswith("cuda:"):
        index = visible.split(",")[0]
    try:
        out = subprocess.run(
            [smi, "-i", index, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "cpu" if setting == "auto" else setting
    return f"cuda: {out}" if out else ("cpu" if setting == "auto" else setting)


def _version() -> str | None:
    try:
        return metadata.version("ftaas")
    except metadata.PackageNotFoundError:
        return None


def _factory(settings: Settings) -> sessionmaker[Session]:
    # The main process gets its own engine (not core.db's cached one), disposed in forked pool
    # processes so that no pooled connection is ever shared across a fork.
    if _State.engine is None:
        _State.engine = make_engine(settings.resolved_database_url)
        engine = _State.engine
        os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
    return sessionmaker(bind=_State.engine, expire_on_commit=False)


def registration(node: str, queues: list[str], settings: Settings) -> workers.Registration:
    return workers.Registration(
        id=node,
        host=socket.gethostname(),
        pid=os.getpid(),
        queues=queues,
        device=describe_device(settings.device),
        memory_total=memory_total(),
        version=_version(),
    )


def _beat(reg: workers.Registration, settings: Settings) -> None:
    interval = workers.registry_interval_s(settings.heartbeat_interval_s)
    factory = _factory(settings)
    while not _State.stop.wait(interval):
        try:
            with session_scope(factory) as session:
                if not workers.heartbeat(session, reg.id, memory_used=memory_used()):
                    workers.register(session, reg, memory_used=memory_used())
        except Exception:  # the database may be briefly away; the next beat retries
            log.warning("worker registry heartbeat failed", exc_info=True)


def start(node: str, queues: list[str], settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    reg = registration(node, queues, settings)
    try:
        with session_scope(_factory(settings)) as session:
            workers.register(session, reg, memory_used=memory_used())
    except Exception:  # the database may be briefly away: the first heartbeat registers it
        log.warning("could not register worker %s yet", node, exc_info=True)
    _State.node = node
    _State.stop.clear()
    _State.thread = threading.Thread(
        target=_beat, args=(reg, settings), name="ftaas-worker-registry", daemon=True
    )
    _State.thread.start()
    log.info("registered worker %s (%s, %s)", node, reg.device, ", ".join(queues))


def stop(settings: Settings | None = None) -> None:
    if _State.node is None:
        return
    _State.stop.set()
    if _State.thread is not None:
        _State.thread.join(timeout=5)
    with session_scope(_factory(settings or get_settings())) as session:
        workers.mark_stopped(session, _State.node)
    _State.node = None


def _current_job(task: Any, job_id: str | None) -> None:
    node = getattr(task.request, "hostname", None)
    if not node:
        return
    try:
        settings = get_settings()
        with session_scope(session_factory(settings.resolved_database_url)) as session:
            workers.set_current_job(session, node, job_id)
    except Exception:  # never fail a job because the registry could not be written
        log.warning("could not record the current job of %s", node, exc_info=True)


@signals.worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    queues = [q.name for q in getattr(sender.task_consumer, "queues", [])] if sender else []
    start(str(sender.hostname), queues)


@signals.worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    try:
        stop()
    except Exception:
        log.warning("could not mark this worker stopped in the registry", exc_info=True)


@signals.task_prerun.connect
def _on_task_start(task: Any = None, args: Any = None, **_: Any) -> None:
    if task is not None and task.name == TASK_RUN_JOB and args:
        _current_job(task, str(args[0]))


@signals.task_postrun.connect
def _on_task_end(task: Any = None, **_: Any) -> None:
    if task is not None and task.name == TASK_RUN_JOB:
        _current_job(task, None)
