"""The sweeper: the database, not the broker, recovers lost work.

- A ``running`` job whose heartbeat is older than ``stale_after_s`` lost its worker: it goes back
  to ``queued`` (and resumes from its last complete checkpoint) or fails after ``max_attempts``.
- A ``queued`` job whose message may have been lost (enqueued longer ago than ``stale_after_s``)
  is sent again. Duplicate messages are harmless: the claim lets only one run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from core import jobs
from core.config import Settings
from core.db import session_factory, session_scope
from core.models import now

log = logging.getLogger(__name__)


def sweep(*, settings: Settings, send: Callable[[str], object]) -> list[str]:
    """Returns the ids of the jobs it (re-)sent."""
    cutoff = now() - int(settings.stale_after_s)
    to_send: list[str] = []
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        for job in jobs.stale_running(session, older_than=cutoff):
            attempt = job.attempt
            if jobs.requeue_stale(session, job, max_attempts=settings.max_attempts):
                jobs.add_event(
                    session,
                    job,
                    f"Worker stopped responding during attempt {attempt}; re-queued to resume "
                    "from the last checkpoint.",
                    level="warn",
                )
                to_send.append(job.id)
            else:
                jobs.add_event(session, job, job.error_message or "Job failed.", level="error")
        for job in jobs.lost_queued(session, older_than=cutoff):
            jobs.touch_enqueued(session, job.id)
            to_send.append(job.id)
    for job_id in to_send:
        log.info("sweeper: sending job %s", job_id)
        send(job_id)
    return to_send
