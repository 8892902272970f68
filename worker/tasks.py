"""Celery tasks: thin wrappers that re-read the row and hand it to the runner or the screener."""

from __future__ import annotations

import logging
import os
import socket

from celery import current_app, shared_task

from core.config import get_settings
from core.queue import TASK_RUN_JOB, TASK_SCREEN_FILE, TASK_SWEEP, send_run_job, send_screen_file
from worker import runner, screening, sweeper
from worker.errors import TRANSIENT_ERRORS

log = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def send_job(job_id: str, kind: str = "fine_tune") -> None:
    send_run_job(current_app, job_id, kind=kind)


def send_file(file_id: str) -> None:
    send_screen_file(current_app, file_id)


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
    screening.screen_file(
        file_id, settings=get_settings(), worker_id=worker_id(), send_again=send_file
    )


@shared_task(name=TASK_SWEEP, ignore_result=True)
def sweep() -> None:
    sweeper.sweep(settings=get_settings(), send=send_job, send_file=send_file)
