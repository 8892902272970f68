"""Celery tasks: thin wrappers that re-read the row and hand it to the runner or the screener."""

from __future__ import annotations

import logging
import os
import socket

from celery import shared_task
from sqlalchemy.exc import OperationalError

from core.config import get_settings
from core.queue import TASK_RUN_JOB, TASK_SCREEN_FILE, TASK_SWEEP, TRAINING_QUEUE
from worker import runner, sweeper

log = logging.getLogger(__name__)

# Infrastructure hiccups worth retrying; everything else is a deterministic failure of the job.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    ConnectionError,
    TimeoutError,
)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def send_job(job_id: str) -> None:
    from celery import current_app

    current_app.send_task(TASK_RUN_JOB, args=[job_id], queue=TRAINING_QUEUE)


def send_file(file_id: str) -> None:
    from celery import current_app

    current_app.send_task(TASK_SCREEN_FILE, args=[file_id], queue=TRAINING_QUEUE)


@shared_task(
    name=TASK_RUN_JOB,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=True,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
)
def run_job(job_id: str) -> None:
    runner.run_job(job_id, settings=get_settings(), worker_id=worker_id(), send=send_job)


@shared_task(
    name=TASK_SCREEN_FILE,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=True,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
)
def screen_file(file_id: str) -> None:
    from worker import screening

    screening.screen_file(file_id, settings=get_settings())


@shared_task(name=TASK_SWEEP, ignore_result=True)
def sweep() -> None:
    sweeper.sweep(settings=get_settings(), send=send_job, send_file=send_file)
