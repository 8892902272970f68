"""Fine-tuning jobs: create (validated, idempotent, enqueued after commit), read, list, and the
cancel/pause/resume transitions. Every query is scoped by the caller's tenant."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import Session

from api.errors import BadRequest, Conflict, Forbidden, NotFound
from api.files.schemas import PURPOSE
from api.files.service import visible as visible_files
from api.ids import is_model_name, is_object_id
from api.jobs.schemas import AUTO, Hyperparameters, JobCreate
from api.pagination import cursor_seq, fetch_page
from core import jobs as lifecycle
from core import quotas
from core.alignments import ALIGNMENT_KIND
from core.config import Settings
from core.model_status import ModelStatus, release_pending
from core.models import Checkpoint, File, Job, JobEvent, Model, Tenant, now
from core.policy import Defense, ServedModel, resolve_defense, resolve_served_model
from core.storage import ArtifactStore

log = logging.getLogger(__name__)

Enqueue = Callable[[str], None]

# OpenAI cookbook's default-epochs heuristic: aim for the target, but keep examples × epochs
# within [MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES] and epochs within [MIN_EPOCHS, MAX_EPOCHS].
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_EPOCHS = 1
MAX_EPOCHS = 25
USABLE_MODEL_STATUSES = ("ready", "pending")
ERRORS_QUOTED = 3


def default_n_epochs(n_examples: int, *, target: int) -> int:
    n_epochs = target
    if n_examples * target < MIN_TARGET_EXAMPLES:
        n_epochs = min(MAX_EPOCHS, MIN_TARGET_EXAMPLES // max(n_examples, 1))
    elif n_examples * target > MAX_TARGET_EXAMPLES:
        n_epochs = max(MIN_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return n_epochs


def requested_hyperparameters(body: JobCreate) -> Hyperparameters:
    from_method = (
        body.method.supervised.hyperparameters if body.method and body.method.supervised else None
    )
    if from_method is not None and body.hyperparameters is not None:
        raise BadRequest(
            "Give hyperparameters either in method.supervised.hyperparameters or in the "
            "deprecated top-level hyperparameters, not both.",
            param="hyperparameters",
        )
    return from_method or body.hyperparameters or Hyperparameters()


def resolve_hyperparameters(
    requested: Hyperparameters, *, n_examples: int, settings: Settings
) -> dict[str, Any]:
    n_epochs = requested.n_epochs
    if n_epochs == AUTO:
        n_epochs = default_n_epochs(n_examples, target=settings.default_n_epochs)
    batch_size = requested.batch_size
    if batch_size == AUTO:
        batch_size = settings.default_batch_size
    multiplier = requested.learning_rate_multiplier
    if multiplier == AUTO:
        multiplier = 1.0
    return {
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate_multiplier": float(multiplier),
        "learning_rate": float(multiplier) * settings.base_learning_rate,
    }


def request_hash(tenant_id: str, body: JobCreate, idempotency_key: str | None) -> str:
    canonical = json.dumps(
        body.model_dump(mode="json", exclude_unset=True), sort_keys=True, separators=(",", ":")
    )
    material = "\x1f".join((tenant_id, idempotency_key or "", canonical))
    return hashlib.sha256(material.encode()).hexdigest()


def _usable_file(session: Session, *, tenant_id: str, file_id: str, param: str) -> File:
    code = f"invalid_{param}"
    # Locked until commit, so a concurrent DELETE cannot remove a file a new job relies on.
    row = None
    if is_object_id(file_id):
        row = session.scalar(
            select(File).where(File.id == file_id, *visible_files(tenant_id)).with_for_update()
        )
    if row is None:
        raise BadRequest(f"File {file_id} not found.", param=param, code=code)
    if row.purpose != PURPOSE:
        raise BadRequest(
            f"File {file_id} has purpose {row.purpose!r}; fine-tuning needs purpose '{PURPOSE}'.",
            param=param,
            code=code,
        )
    if row.status == "error":
        quoted = "; ".join(_describe(e) for e in (row.line_errors or [])[:ERRORS_QUOTED])
        more = row.n_errors - min(ERRORS_QUOTED, len(row.line_errors or []))
        tail = f"; … and {more} more" if more > 0 else ""
        raise BadRequest(
            f"File {file_id} is not a valid training file ({row.n_errors} "
            f"problem{'s' if row.n_errors != 1 else ''}): {quoted}{tail}. "
            f"GET /v1/files/{file_id} lists them.",
            param=param,
            code=code,
        )
    if row.status != "processed":
        raise BadRequest(f"File {file_id} is still being processed.", param=param, code=code)
    return row


def _describe(error: dict[str, Any]) -> str:
    where = "file" if error.get("line") is None else f"line {error['line']}"
    if error.get("field"):
        where += f", field {error['field']}"
    return f"{where}: {error.get('message', '')}"


def _recent_duplicate(
    session: Session, *, tenant_id: str, digest: str, window_s: int
) -> Job | None:
    return session.scalar(
        select(Job)
        .where(
            Job.tenant_id == tenant_id,
            Job.request_hash == digest,
            Job.created_at >= now() - window_s,
            # A cancelled or failed job is not what a retry wants back: resubmitting it is
            # deliberate.
            Job.status.not_in((lifecycle.JobStatus.CANCELLED, lifecycle.JobStatus.FAILED)),
        )
        .order_by(Job.seq.desc())
        .limit(1)
    )


def job_defense(
    session: Session, *, model: Model, settings: Settings
) -> tuple[ServedModel, Defense]:
    """The model a job on ``model`` will train and the defense it will run, from provider
    policy (the worker re-resolves both when it claims the job)."""
    served = resolve_served_model(session, model_id=model.id, settings=settings)
    served_row = model
    if served.model_id != model.id:
        served_row = session.scalar(select(Model).where(Model.id == served.model_id)) or model
    return served, resolve_defense(served_row, settings=settings)


def create_job(
    *,
    session: Session,
    settings: Settings,
    tenant_id: str,
    body: JobCreate,
    idempotency_key: str | None,
    enqueue: Enqueue,
) -> tuple[Job, bool]:
    """Validate, insert as ``queued``, commit, then enqueue (ids only). Returns the job and
    whether it was created (False: an identical request inside the idempotency window)."""
    requested = requested_hyperparameters(body)
    digest = request_hash(tenant_id, body, idempotency_key)
    # Serialise creates per tenant (PostgreSQL row lock; SQLite serialises writers anyway), so
    # two identical requests racing each other still make one job.
    session.execute(select(Tenant.seq).where(Tenant.id == tenant_id).with_for_update())
    existing = _recent_duplicate(
        session, tenant_id=tenant_id, digest=digest, window_s=settings.idempotency_window_s
    )
    if existing is not None:
        session.rollback()
        return existing, False

    model = None
    if is_model_name(body.model):
        model = session.scalar(select(Model).where(Model.id == body.model))
    if model is None or model.status not in USABLE_MODEL_STATUSES:
        raise BadRequest(
            f"The model {body.model!r} does not exist or is not available for fine-tuning.",
            param="model",
            code="model_not_found",
        )
    training = _usable_file(
        session, tenant_id=tenant_id, file_id=body.training_file, param="training_file"
    )
    if body.validation_file is not None:
        validation = _usable_file(
            session, tenant_id=tenant_id, file_id=body.validation_file, param="validation_file"
        )
        if validation.sha256 == training.sha256:
            raise BadRequest(
                "validation_file has the same content as training_file; hold out different examples.",
                param="validation_file",
                code="invalid_validation_file",
            )

    served, defense = job_defense(session, model=model, settings=settings)
    resolved = resolve_hyperparameters(requested, n_examples=training.n_examples, settings=settings)
    limits = quotas.tenant_limits(session, tenant_id, settings=settings)
    estimated = quotas.estimate_tokens(
        file_bytes=training.bytes,
        n_examples=training.n_examples,
        n_epochs=int(resolved["n_epochs"]),
        max_seq_len=settings.max_seq_len,
    )
    quotas.check_job_create(session, tenant_id=tenant_id, limits=limits, estimated_tokens=estimated)
    job = Job(
        tenant_id=tenant_id,
        model=model.id,
        training_file=training.id,
        validation_file=body.validation_file,
        status=lifecycle.JobStatus.QUEUED,
        hyperparameters=requested.model_dump(mode="json"),
        resolved_hyperparameters=resolved,
        estimated_tokens=estimated,
        wall_clock_limit_s=limits.max_job_wall_clock_s or None,
        method="supervised",
        defense=defense.method,
        defense_params=defense.params,
        served_model=served.model_id,
        suffix=body.suffix,
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        metadata_=body.metadata,
        request_hash=digest,
        enqueued_at=now(),
    )
    session.add(job)
    session.flush()
    lifecycle.add_event(session, job, f"Created fine-tuning job: {job.id}")
    session.commit()
    _enqueue(enqueue, job.id)
    return job, True


def _enqueue(enqueue: Enqueue, job_id: str) -> None:
    # The row is committed and queued: if the broker is down the sweeper re-sends it later, so
    # the request still succeeds.
    try:
        enqueue(job_id)
    except Exception:
        log.warning(
            "could not send job %s to the broker; the sweeper will re-send it",
            job_id,
            exc_info=True,
        )


def find_job(*, session: Session, scope: tuple[ColumnElement[bool], ...], job_id: str) -> Job:
    """The job with this id within ``scope`` (a tenant, or everything for the admin)."""
    row = None
    if is_object_id(job_id):
        row = session.scalar(select(Job).where(Job.id == job_id, *scope))
    if row is None:
        raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
    return row


def get_job(*, session: Session, tenant_id: str, job_id: str) -> Job:
    return find_job(session=session, scope=(Job.tenant_id == tenant_id,), job_id=job_id)


def _acted_on(session: Session, tenant_id: str | None, job_id: str) -> Job:
    """The job a transition acts on: the caller's tenant's, or any tenant's when ``tenant_id``
    is None (the provider's dashboard acts on every job through the same transitions)."""
    scope = () if tenant_id is None else (Job.tenant_id == tenant_id,)
    return find_job(session=session, scope=scope, job_id=job_id)


def list_jobs(
    *,
    session: Session,
    scope: tuple[ColumnElement[bool], ...],
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None = None,
    status: str | None = None,
) -> tuple[list[Job], bool]:
    """Newest first within ``scope`` (a tenant, or everything for the admin)."""
    after_seq = cursor_seq(session, Job.seq, Job.id, after, scope)
    query: Select[Job] = select(Job).where(*scope)
    for key, value in (metadata or {}).items():
        query = query.where(Job.metadata_[key].as_string() == value)
    if status is not None:
        query = query.where(Job.status == status)
    return fetch_page(session, query, Job.seq, after_seq=after_seq, limit=limit)


def cancel_job(*, session: Session, tenant_id: str | None, job_id: str) -> Job:
    job = _acted_on(session, tenant_id, job_id)
    if not lifecycle.cancel(session, job):
        session.rollback()
        raise Conflict(
            f"Job {job_id} is {job.status}; only unfinished jobs can be cancelled.",
            param="fine_tuning_job_id",
            code="job_not_cancellable",
        )
    lifecycle.add_event(session, job, "Fine-tuning job cancelled")
    if job.kind == ALIGNMENT_KIND:
        _release_aligned_model(session, job)
    session.commit()
    return job


def _release_aligned_model(session: Session, job: Job) -> None:
    """A cancelled alignment will never register its model: leave the row pending and every
    job served by it would wait forever. It goes back to ready when it still has the adapter of
    an earlier alignment, else to error (hidden, and no longer waited for)."""
    for row in session.scalars(
        select(Model).where(Model.alignment_job_id == job.id, Model.status == ModelStatus.PENDING)
    ):
        release_pending(row)


def pause_job(*, session: Session, tenant_id: str | None, job_id: str) -> Job:
    job = _acted_on(session, tenant_id, job_id)
    if not lifecycle.pause(session, job):
        session.rollback()
        raise Conflict(
            f"Job {job_id} is {job.status}; only running jobs can be paused.",
            param="fine_tuning_job_id",
            code="job_not_running",
        )
    lifecycle.add_event(session, job, "Fine-tuning job paused; it stops at its next checkpoint")
    session.commit()
    return job


def resume_job(*, session: Session, tenant_id: str | None, job_id: str, enqueue: Enqueue) -> Job:
    job = _acted_on(session, tenant_id, job_id)
    if not lifecycle.resume(session, job):
        session.rollback()
        raise Conflict(
            f"Job {job_id} is {job.status}; only paused jobs can be resumed.",
            param="fine_tuning_job_id",
            code="job_not_paused",
        )
    lifecycle.add_event(session, job, "Fine-tuning job resumed")
    session.commit()
    _enqueue(enqueue, job.id)
    return job


def list_events(
    *, session: Session, tenant_id: str, job_id: str, after: str | None, limit: int
) -> tuple[list[JobEvent], bool]:
    job = get_job(session=session, tenant_id=tenant_id, job_id=job_id)
    scope = (JobEvent.job_id == job.id,)
    after_seq = cursor_seq(session, JobEvent.seq, JobEvent.id, after, scope)
    return fetch_page(
        session, select(JobEvent).where(*scope), JobEvent.seq, after_seq=after_seq, limit=limit
    )


def list_checkpoints(
    *,
    session: Session,
    scope: tuple[ColumnElement[bool], ...],
    job_id: str,
    after: str | None,
    limit: int,
) -> tuple[list[Checkpoint], bool]:
    """Newest first; the job is looked up within ``scope`` (a tenant, or everything)."""
    job = find_job(session=session, scope=scope, job_id=job_id)
    scope = (Checkpoint.job_id == job.id,)
    after_seq = cursor_seq(session, Checkpoint.seq, Checkpoint.id, after, scope)
    return fetch_page(
        session,
        select(Checkpoint).where(*scope),
        Checkpoint.seq,
        after_seq=after_seq,
        limit=limit,
    )


def get_checkpoint(
    *, session: Session, tenant_id: str, job_id: str, checkpoint_id: str
) -> Checkpoint:
    job = get_job(session=session, tenant_id=tenant_id, job_id=job_id)
    row = None
    if is_object_id(checkpoint_id):
        row = session.scalar(
            select(Checkpoint).where(
                Checkpoint.id == checkpoint_id,
                Checkpoint.job_id == job.id,
                Checkpoint.tenant_id == tenant_id,
            )
        )
    if row is None:
        raise NotFound(f"No such checkpoint: {checkpoint_id}", param="checkpoint_id")
    return row


def deployable_adapter(
    *, session: Session, store: ArtifactStore, tenant_id: str, job_id: str, checkpoint_id: str
) -> tuple[Checkpoint, Path]:
    """The checkpoint and its PEFT adapter directory, only if it passed the release gate."""
    row = get_checkpoint(
        session=session, tenant_id=tenant_id, job_id=job_id, checkpoint_id=checkpoint_id
    )
    if row.deployable is None:
        state = "has not been safety-evaluated yet" if row.safety is None else "was not gated"
        raise Conflict(
            f"Checkpoint {row.id} {state}; only an adapter that passed the safety release gate "
            "can be downloaded.",
            param="checkpoint_id",
            code="not_evaluated",
        )
    if row.deployable is not True:
        scores = json.dumps(row.safety, sort_keys=True) if row.safety is not None else "null"
        raise Forbidden(
            f"Checkpoint {row.id} did not pass the safety release gate, so its adapter cannot be "
            f"downloaded. Its safety evaluation: {scores}",
            param="checkpoint_id",
            code="safety_gate",
        )
    try:
        path = store.path(row.storage_key)
        stored = path.is_dir()
    except (OSError, ValueError):
        stored = False
    if not stored:
        raise NotFound(
            f"The adapter of checkpoint {row.id} is no longer stored.", param="checkpoint_id"
        )
    return row, path
