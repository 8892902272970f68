"""What the job page shows, read from the database: the job row, its metric history from
``job_events`` (never from ``checkpoints``, which the worker prunes to the newest few), its
newest events, and its flagged lines with their text and review decisions.

Event shapes (worker/reporting.py), all ``type="metrics"``:
- a step: ``{step, total_steps, train_loss, tokens_per_second, learning_rate, epoch, ...}``;
- a checkpoint: ``{step, train_loss?, full_valid_loss?, ...}`` (no ``total_steps``);
- a checkpoint's safety: ``{step, harmful_score, over_refusal, validation_loss?, deployable}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.dashboard import charts
from api.dashboard.lines import read_lines
from core import reviews
from core.jobs import TERMINAL
from core.models import Checkpoint, File, Job, JobEvent, Model, Tenant
from core.storage import ArtifactStore

EVENTS_SHOWN = 100


@dataclass
class History:
    train: list[charts.Point] = field(default_factory=list)
    validation: list[charts.Point] = field(default_factory=list)
    safety: list[dict[str, Any]] = field(default_factory=list)
    last_step: dict[str, Any] | None = None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def history(session: Session, job_id: str) -> History:
    """The job's curves from its metrics events. The numbers are pulled out of the JSON by the
    database (no per-row JSON decoding in Python, no ORM objects: a job has ~10,000 events);
    only the few safety events and the newest step event are read whole."""
    data = JobEvent.__table__.c.data
    numbers = (
        JobEvent.__table__.c.seq,
        data["step"].as_float(),
        data["train_loss"].as_float(),
        data["total_steps"].as_float(),
        data["harmful_score"].as_float(),
        # Checkpoint events carry full_valid_loss (valid_loss in older rows), safety events
        # validation_loss; COALESCE stops at the first one present.
        func.coalesce(
            data["full_valid_loss"].as_float(),
            data["validation_loss"].as_float(),
            data["valid_loss"].as_float(),
        ),
    )
    rows = session.connection().execute(
        select(*numbers)
        .where(JobEvent.__table__.c.job_id == job_id, JobEvent.__table__.c.type == "metrics")
        .order_by(JobEvent.__table__.c.seq)
    )
    out = History()
    validation: dict[float, float] = {}
    safety_seqs: list[int] = []
    last_step_seq: int | None = None
    for seq, step, train, total, harmful, loss in rows:
        if step is None:
            continue
        if harmful is not None:
            safety_seqs.append(seq)
        elif total is not None and train is not None:
            out.train.append((step, train))
            last_step_seq = seq
        if loss is not None:
            validation[step] = loss
    out.validation = sorted(validation.items())
    wanted = safety_seqs + ([last_step_seq] if last_step_seq is not None else [])
    whole: dict[int, Any] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows_ = session.execute(select(JobEvent.seq, JobEvent.data).where(JobEvent.seq.in_(chunk)))
        whole.update((int(seq), value) for seq, value in rows_)
    by_step = {}
    for seq in safety_seqs:
        item = whole.get(seq)
        if isinstance(item, dict) and _num(item.get("step")) is not None:
            by_step[float(item["step"])] = item
    out.safety = [by_step[s] for s in sorted(by_step)]
    if last_step_seq is not None and isinstance(whole.get(last_step_seq), dict):
        out.last_step = whole[last_step_seq]
    return out


def version(session: Session, job: Job) -> str:
    """Changes whenever anything the live part of the job page shows changes: a new event, or
    the row's status, progress, heartbeat or safety. One indexed query."""
    newest = session.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job.id))
    return f"{newest or 0}.{job.status}.{job.step}.{job.heartbeat_at or 0}.{job.attempt}"


def gate_threshold(job: Job) -> float | None:
    safety = job.safety or {}
    if isinstance(safety.get("threshold"), int | float):
        return float(safety["threshold"])
    start = safety.get("start") or {}
    if isinstance(start.get("harmful_score"), int | float):
        return float(start["harmful_score"]) + float(safety.get("margin") or 0.0)
    return None


def job_charts(job: Job, hist: History, served_safety: dict[str, Any] | None) -> list[Any]:
    """(caption, svg) for each chart of the job page."""
    start = (job.safety or {}).get("start") or {}
    loss = charts.line_chart(
        [
            charts.Series("training loss", hist.train, color="#9db7e3", width=1),
            charts.Series("smoothed", charts.ema(hist.train), color="#2458b3", width=2),
            charts.Series("validation loss", hist.validation, color="#a15c00", dots=True),
        ],
        label=f"Loss of {job.id}",
    )
    threshold = gate_threshold(job)
    scored = [s for s in hist.safety if _num(s.get("harmful_score")) is not None]
    harmful_points = [(float(s["step"]), float(s["harmful_score"])) for s in scored]
    gate = []
    if threshold is not None:
        gate.append(charts.HLine(threshold, f"release gate {threshold:.3f}"))
    if _num(start.get("harmful_score")) is not None:
        gate.append(charts.HLine(float(start["harmful_score"]), "starting model", color="#5d6b7e"))
    verdicts = {True: "deployable", False: "NOT deployable", None: "not gated"}
    markers = [
        charts.Marker(
            x,
            y,
            s.get("deployable"),
            f"step {x:g}: harmful {y:.3f}, " + verdicts.get(s.get("deployable"), "not gated"),
        )
        for (x, y), s in zip(harmful_points, scored, strict=True)
    ]
    harmful = charts.line_chart(
        [charts.Series("harmful score", harmful_points, color="#7a3cb3")],
        label=f"Harmful score per checkpoint of {job.id}",
        hlines=gate,
        markers=markers,
        y_min=0.0,
    )
    refusal_points = [
        (float(s["step"]), float(s["over_refusal"]))
        for s in hist.safety
        if _num(s.get("over_refusal")) is not None
    ]
    refs = []
    if _num(start.get("over_refusal")) is not None:
        refs.append(charts.HLine(float(start["over_refusal"]), "starting model", color="#5d6b7e"))
    if served_safety and _num(served_safety.get("over_refusal")) is not None:
        refs.append(
            charts.HLine(
                float(served_safety["over_refusal"]), "served model (cached)", color="#a15c00"
            )
        )
    refusal = charts.line_chart(
        [charts.Series("over-refusal", refusal_points, color="#1e7a3c", dots=True)],
        label=f"Over-refusal per checkpoint of {job.id}",
        hlines=refs,
        y_min=0.0,
    )
    return [
        ("Training loss (raw and smoothed) and validation loss", loss),
        ("Harmful score per checkpoint against the release gate", harmful),
        ("Over-refusal per checkpoint against the starting model", refusal),
    ]


def events(session: Session, job_id: str) -> list[Any]:
    return list(
        session.execute(
            select(
                JobEvent.seq, JobEvent.created_at, JobEvent.level, JobEvent.type, JobEvent.message
            )
            .where(JobEvent.job_id == job_id)
            .order_by(JobEvent.seq.desc())
            .limit(EVENTS_SHOWN)
        )
    )


def checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    return list(
        session.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == job_id)
            .order_by(Checkpoint.step_number.desc())
        )
    )


def screening_scores(report: dict[str, Any] | None) -> dict[int, float]:
    """{line: upload-screening score} for the lines the upload screening listed."""
    scores: dict[int, float] = {}
    for item in (report or {}).get("flagged") or []:
        if isinstance(item, dict) and isinstance(item.get("line"), int):
            score = _num(item.get("score"))
            if score is not None:
                scores[item["line"]] = score
    return scores


def flagged(
    session: Session, store: ArtifactStore, job: Job, *, texts: bool = True
) -> list[dict[str, Any]]:
    items = [i for i in (job.flagged_lines or []) if isinstance(i, dict) and "line" in i]
    file = session.scalar(select(File).where(File.id == job.training_file))
    scores = screening_scores(file.safety_report if file else None)
    wanted = [int(i["line"]) for i in items]
    text = read_lines(store, file.storage_key, wanted) if (file and texts) else {}
    decided = reviews.decisions_for(session, [(job.id, n) for n in wanted])
    return [
        {
            **i,
            "job_id": job.id,
            "text": text.get(int(i["line"])),
            "screening_score": scores.get(int(i["line"])),
            "decision": decided.get((job.id, int(i["line"]))),
        }
        for i in items
    ]


def context(
    session: Session, store: ArtifactStore, job: Job, *, with_flagged: bool = True
) -> dict[str, Any]:
    tenant = session.scalar(select(Tenant.name).where(Tenant.id == job.tenant_id))
    served = session.scalar(select(Model.safety).where(Model.id == (job.served_model or job.model)))
    hist = history(session, job.id)
    filename = session.scalar(select(File.filename).where(File.id == job.training_file))
    return {
        "training_filename": filename,
        "job": job,
        "tenant": tenant,
        "terminal": job.status in TERMINAL,
        "threshold": gate_threshold(job),
        "charts": job_charts(job, hist, served),
        "safety_points": hist.safety,
        "last_step": hist.last_step,
        "events": events(session, job.id),
        "checkpoints": checkpoints(session, job.id),
        "flagged": flagged(session, store, job) if with_flagged else [],
    }
