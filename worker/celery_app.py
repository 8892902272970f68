"""The Celery app the workers run: core's queue client plus worker hygiene, preemption and the
sweeper.

Start one worker per GPU: ``ftaas worker --queues training,alignment,screening`` (see
``cli.main._worker_argv``). Workers run the ``solo`` pool: the task runs in the worker's main
process, so Celery's SIGTERM/SIGINT handler is in the same process as the job and preemption
(``worker.preemption``) can checkpoint it and give it back; and no process is started per task
(a long-lived process keeps the imports and the prepared assets; memory is released after each
task instead, ``release_memory``).
"""

from __future__ import annotations

# First: it sets prometheus client's multiprocess folder before anything imports the client.
from worker import observability  # isort: skip

import gc
import sys
from typing import Any

from celery import Celery, signals

from core.config import get_settings
from core.private import private_dir, restrict_umask
from core.queue import MAINTENANCE_QUEUE, TASK_SWEEP, TRAINING_QUEUE, make_celery
from worker import (
    preemption,
    registry,  # noqa: F401  (connects the worker-registry signal handlers)
)

WORKER_POOL = "solo"


def create_worker_app() -> Celery:
    restrict_umask()  # checkpoints, adapters, the beat schedule: owner-only (core/private.py)
    settings = get_settings()
    private_dir(settings.resolved_home)
    app = make_celery(settings)
    app.conf.update(
        worker_concurrency=1,  # one job per GPU
        worker_pool=WORKER_POOL,
        task_queues=None,
        task_default_queue=TRAINING_QUEUE,
        task_routes={TASK_SWEEP: {"queue": MAINTENANCE_QUEUE}},
        beat_schedule={
            "sweep-lost-jobs": {
                "task": TASK_SWEEP,
                "schedule": settings.sweep_interval_s,
                "options": {"queue": MAINTENANCE_QUEUE},
            },
        },
        beat_schedule_filename=str(settings.resolved_home / "celerybeat-schedule"),
        worker_hijack_root_logger=False,
    )
    app.autodiscover_tasks(["worker"], related_name="tasks", force=True)
    return app


def connect_observability() -> None:
    """Our logging instead of Celery's, the worker's /metrics, the job id on every record."""
    signals.setup_logging.connect(observability.on_setup_logging, weak=False)
    signals.worker_init.connect(observability.on_worker_init, weak=False)
    signals.worker_process_shutdown.connect(observability.on_process_shutdown, weak=False)
    signals.task_prerun.connect(observability.on_task_prerun, weak=False)
    signals.task_postrun.connect(observability.on_task_postrun, weak=False)


connect_observability()


@signals.task_postrun.connect(weak=False)
def release_memory(**_: Any) -> None:
    """The process outlives the task: drop the model and give cached GPU memory back."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


preemption.install()
app = create_worker_app()
