"""The sweeper: the database, not the broker, recovers lost work.

- A ``running`` job whose heartbeat is older than ``stale_after_s`` lost its worker: it goes back
  to ``queued`` (and resumes from its last complete checkpoint) or fails after ``max_attempts``.
- A ``queued`` job whose message may have been lost (enqueued longer ago than ``stale_after_s``)
  is sent again. Duplicate messages are harmless: the claim lets only one run.
- A file still ``queued`` for screening ``stale_after_s`` after its upload (or after the last
  re-send, stamped as ``safety_report.resent_at``) is sent again (``send_file``).
- An expired file's bytes are deleted (``core.retention``), its row kept and marked deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import jobs
from core.config import Settings
from core.db import session_factory, session_scope
from core.models import File, now
from core.retention import purge_expired
from core.storage import ArtifactStore

log = logging.getLogger(__name__)


def sweep(
    *,
    settings: Settings,
    send: Callable[[str], object],
    send_file: Callable[[str], object] | None = None,
) -> list[str]:
    """Returns the ids of the jobs (and files) it (re-)sent."""
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
        files = _lost_screenings(session, older_than=cutoff) if send_file else []
        purged = purge_expired(session, ArtifactStore(settings.resolved_artifacts_dir))
        if purged:
            log.info("sweeper: deleted the bytes of %d expired file(s)", len(purged))
    for job_id in to_send:
        log.info("sweeper: sending job %s", job_id)
        send(job_id)
    for file_id in files:
        log.info("sweeper: sending file %s to screening", file_id)
        assert send_file is not None
        send_file(file_id)
    return to_send + files


def _lost_screenings(session: Session, *, older_than: int) -> list[str]:
    ids = []
    for row in session.scalars(
        select(File).where(
            File.safety_status == "queued", File.created_at < older_than, File.deleted_at.is_(None)
        )
    ):
        if int((row.safety_report or {}).get("resent_at", 0)) < older_than:
            row.safety_report = {**(row.safety_report or {}), "resent_at": now()}
            ids.append(row.id)
    return ids
