"""Preemption: SIGTERM or SIGINT to a worker (a supervisor stopping it, ``docker stop``, a spot
GPU reclaimed) checkpoints the running job at its next step boundary and gives it back to the
queue without using up an attempt; another worker resumes it.

The worker runs Celery's ``solo`` pool (``cli.main._worker_argv``): the task runs in the worker's
main process, where Celery's own SIGTERM/SIGINT handler runs and sends ``worker_shutting_down``.
We only raise a flag there; the job's reporter reads it before every step (``should_stop``) and
between the batches of every other long phase (``defense.progress.tick``). Celery's warm shutdown
then waits for the task, which returns within one step, and the process exits.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

_requested = threading.Event()


def requested() -> bool:
    return _requested.is_set()


def request(reason: str = "stop requested") -> None:
    if not _requested.is_set():
        log.warning(
            "preemption: %s; the running job checkpoints and goes back to the queue", reason
        )
    _requested.set()


def reset() -> None:
    """For a process that runs jobs again after a preemption was handled (tests)."""
    _requested.clear()


def install() -> None:
    """Raise the flag when the Celery worker starts its shutdown."""
    from celery import signals

    def on_shutdown(sig: Any = None, how: Any = None, **_: Any) -> None:
        request(f"{sig or 'signal'} ({how or 'warm'} shutdown)")

    signals.worker_shutting_down.connect(on_shutdown, weak=False)
