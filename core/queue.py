"""The queue client: a Celery app configured from settings, and task names sent by name.

The API never imports the worker's code; it sends ``TASK_RUN_JOB`` with the job id only. The
worker registers the same names (worker/tasks.py) on an app built by ``make_celery``.
"""

from __future__ import annotations

from celery import Celery

from core.config import Settings
from core.private import private_sqlite_file

TASK_RUN_JOB = "ftaas.jobs.run"
TASK_SWEEP = "ftaas.jobs.sweep"
TASK_SCREEN_FILE = "ftaas.files.screen"
TRAINING_QUEUE = "training"
# Light periodic work (the sweeper) has its own queue so it never waits behind a training job.
MAINTENANCE_QUEUE = "maintenance"
# Stage-1 alignments run for hours on a CPU: their own queue keeps user jobs from waiting behind
# them, and upload screening has its own so a slow or huge file never stalls training.
ALIGNMENT_QUEUE = "alignment"
SCREENING_QUEUE = "screening"
ALL_QUEUES = (TRAINING_QUEUE, ALIGNMENT_QUEUE, SCREENING_QUEUE, MAINTENANCE_QUEUE)


def make_celery(settings: Settings) -> Celery:
    broker = settings.resolved_broker_url
    if broker.startswith("sqla+sqlite:///"):  # the embedded broker's database: 0600 too
        private_sqlite_file(broker.removeprefix("sqla+sqlite:///"))
    app = Celery("ftaas", broker=broker)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # the job row is the result
        result_backend=None,
        task_acks_late=False,  # early ack: recovery is the database's job (design.md)
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        task_default_queue=TRAINING_QUEUE,
        enable_utc=True,
    )
    return app


def job_queue(kind: str) -> str:
    """The queue a job's task goes to: alignments have their own (hours on a CPU), so user
    jobs never wait behind them."""
    return ALIGNMENT_QUEUE if kind == "alignment" else TRAINING_QUEUE


def send_run_job(app: Celery, job_id: str, kind: str = "fine_tune") -> None:
    app.send_task(TASK_RUN_JOB, args=[job_id], queue=job_queue(kind))


def send_screen_file(app: Celery, file_id: str) -> None:
    app.send_task(TASK_SCREEN_FILE, args=[file_id], queue=SCREENING_QUEUE)
