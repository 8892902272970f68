"""The API's side of the queue: a Celery client created on first use, sending by task name."""

from __future__ import annotations

import threading

from celery import Celery

from core.config import Settings
from core.queue import make_celery, send_run_job, send_screen_file


class QueueClient:
    """Created with the app, connected lazily: an app that never enqueues never opens the broker."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._celery: Celery | None = None
        self._lock = threading.Lock()

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            with self._lock:
                if self._celery is None:
                    self._celery = make_celery(self._settings)
        return self._celery

    def send_run_job(self, job_id: str) -> None:
        send_run_job(self.celery, job_id)

    def send_alignment_job(self, job_id: str) -> None:
        """Alignments go to their own queue (hours on a CPU; user jobs never wait behind)."""
        send_run_job(self.celery, job_id, kind="alignment")

    def send_screen_file(self, file_id: str) -> None:
        send_screen_file(self.celery, file_id)
