"""Retention: an expired file's bytes are deleted; its row (metadata) is kept, marked deleted.

Run by the sweeper. A file still used by an unfinished job keeps its bytes until that job ends
(the job was accepted while the file was live), as DELETE /v1/files does. The row is marked
(``deleted_at``) before the bytes go, so a crash between the two leaves an orphan file rather
than a row pointing at nothing; ``storage_key`` is kept for the record.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from core.jobs import CANCELLABLE
from core.models import File, Job, now
from core.storage import ArtifactStore

log = logging.getLogger(__name__)

BATCH = 500


def expired_files(session: Session, *, at: int, limit: int = BATCH) -> list[File]:
    """Expired, not yet deleted, and not used by an unfinished job."""
    in_use = select(Job.id).where(
        Job.status.in_(CANCELLABLE),
        or_(Job.training_file == File.id, Job.validation_file == File.id),
    )
    return list(
        session.scalars(
            select(File)
            .where(
                File.deleted_at.is_(None),
                File.expires_at.is_not(None),
                File.expires_at <= at,
                ~in_use.exists(),
            )
            .order_by(File.expires_at)
            .limit(limit)
        )
    )


def purge_expired(session: Session, store: ArtifactStore) -> list[str]:
    """Mark expired files deleted, commit, then delete their bytes. Returns their ids."""
    ts = now()
    rows = expired_files(session, at=ts)
    purged: list[tuple[str, str]] = []
    for row in rows:
        result: Any = session.execute(
            update(File)
            .where(File.id == row.id, File.deleted_at.is_(None))
            .values(deleted_at=ts)
            .execution_options(synchronize_session=False)
        )
        if int(result.rowcount) == 1:
            purged.append((row.id, row.storage_key))
    session.commit()
    for file_id, key in purged:
        try:
            store.delete(key)
        except (OSError, ValueError):
            log.warning("retention: could not delete the bytes of %s (%s)", file_id, key)
    return [file_id for file_id, _ in purged]
