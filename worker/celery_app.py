"""The Celery app the workers run: core's queue client plus GPU-worker hygiene and the sweeper.

Start one worker per GPU: ``ftaas worker`` (or ``celery -A worker.celery_app worker``).
"""

from __future__ import annotations

# First: it sets prometheus client's multiprocess folder before anything imports the client.
from worker import observability  # isort: skip

from celery import Celery, signals

from core.config import get_settings
from core.queue import MAINTENANCE_QUEUE, TASK_SWEEP, TRAINING_QUEUE, make_celery


def create_worker_app() -> Celery:
    settings = get_settings()
    app = make_celery(settings)
    app.conf.update(
        worker_concurrency=1,  # one job per GPU
        worker_max_tasks_per_child=1,  # a fresh process per job releases all GPU memory
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
app = create_worker_app()
