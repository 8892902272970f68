"""A worker's logs and metrics: JSON/text logging with the job id, and its own ``/metrics``.

Import this module before anything imports ``prometheus_client`` (worker/celery_app.py does it
first): prometheus client picks its multiprocess mode when it is imported, and a prefork worker's
tasks run in child processes, so with ``FTAAS_WORKER_METRICS_PORT`` set every process writes its
samples under ``FTAAS_HOME/metrics/worker-<port>`` and the main process serves their sum.

Series (docs/operations.md): task runs and their seconds by task and outcome, training step
seconds and tokens/s, and whether a task is running.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from core.config import get_settings
from core.logs import configure_logging, job_context

log = logging.getLogger(__name__)


def _metrics_dir() -> Path | None:
    settings = get_settings()
    if settings.worker_metrics_port is None:
        return None
    path = settings.resolved_home / "metrics" / f"worker-{settings.worker_metrics_port}"
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Emptied now, in the worker's main process before any metric exists: samples left by
        # an earlier run of this worker (a kill -9 leaves them) must not be counted again.
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])


METRICS_DIR = _metrics_dir()

from prometheus_client import Counter, Gauge, Histogram  # noqa: E402  (after the env is set)

TASK_SECONDS = Histogram(
    "ftaas_worker_task_seconds",
    "Seconds a task ran in this worker, by task name and outcome.",
    ["task", "outcome"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 12 * 3600),
)
TASKS = Counter("ftaas_worker_tasks", "Tasks run by this worker.", ["task", "outcome"])
STEP_SECONDS = Histogram(
    "ftaas_worker_step_seconds",
    "Seconds per training step (between two step reports of the job this worker runs).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TOKENS_PER_SECOND = Gauge(
    "ftaas_worker_tokens_per_second",
    "Training tokens/s of the job this worker runs (0 when idle).",
    multiprocess_mode="livesum",
)
BUSY = Gauge("ftaas_worker_busy", "1 while a task runs.", ["task"], multiprocess_mode="livesum")

_last_step: dict[str, float] = {}


def observe_step(job_id: str, tokens_per_second: float) -> None:
    """Called on every training step (worker/reporting.py)."""
    at = time.monotonic()
    previous = _last_step.get(job_id)
    _last_step[job_id] = at
    if previous is not None:
        STEP_SECONDS.observe(at - previous)
    TOKENS_PER_SECOND.set(tokens_per_second)


# -- Celery signal handlers (connected in worker/celery_app.py) ---------------------------------


def on_setup_logging(**_: Any) -> None:
    """Replaces Celery's logging set-up with ours (text or JSON, job id on every record)."""
    configure_logging(get_settings())


def on_worker_init(**_: Any) -> None:
    """Main process, before the pool starts: the HTTP server summing every process's samples."""
    settings = get_settings()
    if METRICS_DIR is None or settings.worker_metrics_port is None:
        return
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(settings.worker_metrics_port, registry=registry)
    log.info("worker metrics on :%d/metrics", settings.worker_metrics_port)


def on_process_shutdown(pid: int | None = None, **_: Any) -> None:
    if METRICS_DIR is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


_running: dict[str, tuple[float, Any]] = {}


def on_task_prerun(task_id: str = "", task: Any = None, args: Any = None, **_: Any) -> None:
    """Every record a job's task makes carries its id (the first argument: a job or file id)."""
    subject = str(args[0]) if args else ""
    context = job_context(subject) if subject else None
    if context is not None:
        context.__enter__()
    _running[task_id] = (time.monotonic(), context)
    BUSY.labels(getattr(task, "name", "?")).set(1)


def on_task_postrun(
    task_id: str = "", task: Any = None, state: str | None = None, **_: Any
) -> None:
    started, context = _running.pop(task_id, (time.monotonic(), None))
    name = getattr(task, "name", "?")
    outcome = "ok" if state == "SUCCESS" else (state or "unknown").lower()
    TASK_SECONDS.labels(name, outcome).observe(time.monotonic() - started)
    TASKS.labels(name, outcome).inc()
    BUSY.labels(name).set(0)
    TOKENS_PER_SECOND.set(0)
    _last_step.clear()
    if context is not None:
        context.__exit__(None, None, None)
