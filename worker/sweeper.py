"""The sweeper: the database, not the broker, recovers lost work.

- A ``running`` job whose heartbeat is older than ``stale_after_s`` lost its worker (every long
  phase heartbeats, so silence means a dead or hung process): it goes back to ``queued`` (and
  resumes from its last complete checkpoint) or fails after ``max_attempts``.
- A ``queued`` job is sent again only when its message can really be lost: ``resend_grace_s``
  after its last send (or its enqueue), the wait doubling with every re-send up to
  ``resend_max_backoff_s`` (``jobs.sent_at``, ``jobs.sends``), since a message that waits behind
  a long job on a busy queue is not lost. A job deferred after an environment error is sent
  when its ``retry_at`` comes. Duplicate messages are harmless: the claim lets only one run.
- Screening is recovered like jobs: a file whose screening worker went silent goes back to
  ``queued`` and is sent again (failed after ``screening_max_attempts``); a file still ``queued``
  ``stale_after_s`` after its upload or last re-send is sent again.
- An expired file's bytes are deleted (``core.retention``), its row kept and marked deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from core import jobs, screening
from core.config import Settings
from core.db import session_factory, session_scope
from core.models import now
from core.retention import purge_expired
from core.storage import ArtifactStore

log = logging.getLogger(__name__)


def sweep(
    *,
    settings: Settings,
    send: Callable[[str, str], object],
    send_file: Callable[[str], object] | None = None,
) -> list[str]:
    """Returns the ids of the jobs (and files) it (re-)sent. ``send(job_id, kind)``."""
    at = now()
    cutoff = at - int(settings.stale_after_s)
    to_send: list[tuple[str, str]] = []
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
                to_send.append((job.id, job.kind))
            else:
                jobs.add_event(session, job, job.error_message or "Job failed.", level="error")
        requeued = {job_id for job_id, _ in to_send}
        for job in jobs.resend_due(
            session,
            at=at,
            grace_s=settings.resend_grace_s,
            max_backoff_s=settings.resend_max_backoff_s,
        ):
            if job.id not in requeued:
                to_send.append((job.id, job.kind))
        for job_id, _ in to_send:
            jobs.mark_sent(session, job_id)
        files: list[str] = []
        if send_file is not None:
            files = screening.recover_stale(
                session, older_than=cutoff, max_attempts=settings.screening_max_attempts
            )
            files += screening.lost_queued(session, older_than=cutoff)
        purged = purge_expired(session, ArtifactStore(settings.resolved_artifacts_dir))
        if purged:
            log.info("sweeper: deleted the bytes of %d expired file(s)", len(purged))
    for job_id, kind in to_send:
        log.info("sweeper: sending job %s", job_id)
        send(job_id, kind)
    for file_id in files:
        log.info("sweeper: sending file %s to screening", file_id)
        assert send_file is not None
        send_file(file_id)
    return [job_id for job_id, _ in to_send] + files
