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

from markupsafe import Markup
from sqlalchemy import Float, Select, column, func, select, true
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


METRIC_FIELDS = ("step", "train_loss", "harmful_score", "full_valid_loss", "validation_loss")


def _numbers_query(session: Session, job_id: str) -> Select[Any]:
    """(seq, step, train_loss, harmful_score, validation loss) of each metrics event.

    PostgreSQL's ``json`` column is text: each ``->>`` parses the document again, so there one
    ``json_to_record`` per row parses it once. SQLite's ``json_extract`` is cheap enough."""
    events = JobEvent.__table__
    table = events.c
    source: Any = events
    if session.get_bind().dialect.name == "postgresql":
        record = (
            func.json_to_record(table.data)
            .table_valued(*(column(name, Float) for name in METRIC_FIELDS))
            .render_derived(name="m", with_types=True)
            .lateral()
        )
        source = events.join(record, true())
        values = [record.c[name] for name in METRIC_FIELDS]
    else:
        values = [table.data[name].as_float() for name in METRIC_FIELDS]
    step, train, harmful, full_valid, validation = values
    return (
        select(table.seq, step, train, harmful, func.coalesce(full_valid, validation))
        .select_from(source)
        .where(table.job_id == job_id, table.type == "metrics")
        .order_by(table.seq)
    )


def history(session: Session, job_id: str) -> History:
    """The job's curves from its metrics events. The numbers are pulled out of the JSON by the
    database (no per-row JSON decoding in Python, no ORM objects: a job has ~10,000 events);
    only the few safety events and the newest step event are read whole.

    A training-loss point is any event with ``train_loss`` (step events, and checkpoint events,
    which repeat the loss of their step); validation losses come from checkpoint events
    (``full_valid_loss``) and safety events (``validation_loss``)."""
    rows = session.connection().execute(_numbers_query(session, job_id))
    out = History()
    validation: dict[float, float] = {}
    safety_seqs: list[int] = []
    for seq, step, train, harmful, loss in rows:
        if step is None:
            continue
        if harmful is not None:
            safety_seqs.append(seq)
        elif train is not None:
            out.train.append((step, train))
        if loss is not None:
            validation[step] = loss
    out.validation = sorted(validation.items())
    by_step: dict[float, dict[str, Any]] = {}
    for start in range(0, len(safety_seqs), 500):
        chunk = safety_seqs[start : start + 500]
        for (item,) in session.execute(select(JobEvent.data).where(JobEvent.seq.in_(chunk))):
            if isinstance(item, dict) and _num(item.get("step")) is not None:
                by_step[float(item["step"])] = item
    out.safety = [by_step[s] for s in sorted(by_step)]
    # The newest step event (a checkpoint and a safety event may follow it).
    for (item,) in session.execute(
        select(JobEvent.data)
        .where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        .order_by(JobEvent.seq.desc())
        .limit(10)
    ):
        if isinstance(item, dict) and "total_steps" in item:
            out.last_step = item
            break
    return out


def version(session: Session, job: Job) -> str:
    """Changes whenever anything the live part of the job page shows changes: a new event, or
    the row's status, progress, heartbeat or attempt (the worker writes safety scores and the
    ETA together with a heartbeat). One indexed query."""
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


def job_charts(
    job: Job, hist: History, served_safety: dict[str, Any] | None
) -> list[tuple[str, Markup]]:
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
