"""Admin decisions on flagged training lines (harmful or benign), and the flagging precision
they measure: of the lines the defense down-weighted that an admin looked at, how many were
really harmful."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import LineReview, now

IN_CHUNK = 500


class Decision(StrEnum):
    HARMFUL = "harmful"
    BENIGN = "benign"


@dataclass(frozen=True)
class Precision:
    harmful: int
    benign: int

    @property
    def decided(self) -> int:
        return self.harmful + self.benign

    @property
    def value(self) -> float | None:
        return self.harmful / self.decided if self.decided else None


def decide(
    session: Session, *, job_id: str, line: int, decision: Decision, api_key_id: str
) -> LineReview:
    """Record (or change) the decision on one line of one job: one row per job and line."""
    row = session.scalar(
        select(LineReview).where(LineReview.job_id == job_id, LineReview.line == line)
    )
    if row is None:
        row = LineReview(job_id=job_id, line=line, decision=decision, api_key_id=api_key_id)
        session.add(row)
    else:
        row.decision, row.api_key_id, row.decided_at = decision, api_key_id, now()
    session.flush()
    return row


def decisions_for(session: Session, keys: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """The decisions on the given (job, line) pairs, where there are any."""
    job_ids = sorted({job_id for job_id, _ in keys})
    wanted = set(keys)
    found: dict[tuple[str, int], str] = {}
    for start in range(0, len(job_ids), IN_CHUNK):  # bounded IN lists (SQLite's variable limit)
        rows = session.execute(
            select(LineReview.job_id, LineReview.line, LineReview.decision).where(
                LineReview.job_id.in_(job_ids[start : start + IN_CHUNK])
            )
        )
        found.update(
            ((job_id, line), decision)
            for job_id, line, decision in rows
            if (job_id, line) in wanted
        )
    return found


def precision(session: Session) -> Precision:
    counts = dict(
        session.execute(
            select(LineReview.decision, func.count()).group_by(LineReview.decision)
        ).all()
    )
    return Precision(harmful=int(counts.get("harmful", 0)), benign=int(counts.get("benign", 0)))


def reviewed_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(LineReview)) or 0)
