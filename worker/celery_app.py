"""The Celery app the workers run: core's queue client plus GPU-worker hygiene and the sweeper.

Start one worker per GPU: ``ftaas worker`` (or ``celery -A worker.celery_app worker``).
"""

from __future__ import annotations

from celery import Celery

from core.config import get_settings
from core.private import private_dir, restrict_umask
from core.queue import MAINTENANCE_QUEUE, TASK_SWEEP, TRAINING_QUEUE, make_celery


def create_worker_app() -> Celery:
    restrict_umask()  # checkpoints, adapters, the beat schedule: owner-only (core/private.py)
    settings = get_settings()
    private_dir(settings.resolved_home)
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


app = create_worker_app()
