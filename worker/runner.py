"""Turn one job row into a training run: the only place that maps a job onto defense/ configs.

Flow: claim the job (a conditional UPDATE; no row means a duplicate delivery or a cancelled job)
-> load the base model and the training file -> ``defense.finetune.fit`` with a reporter that
heartbeats, throttles metrics events, records checkpoints and asks the row whether to stop ->
store the final adapter and mark the job succeeded. Deterministic errors fail the job with a clear
message and are not retried; transient ones (database, broker) release the job and re-raise so
Celery retries with backoff.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import jobs
from core.config import Settings
from core.datasets import DatasetLimits, iter_examples
from core.db import session_factory, session_scope
from core.models import File, Job, Tenant
from core.storage import ArtifactStore, file_key, job_dir_key
from worker.models import ModelUnavailable, resolve_base_model
from worker.reporting import JobReporter

log = logging.getLogger(__name__)


class JobError(Exception):
    """A deterministic failure: recorded on the job with ``code``, never retried."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass(frozen=True)
class JobPlan:
    """Everything the training run needs, read from the database in one short transaction."""

    job_id: str
    tenant_name: str
    model: str
    suffix: str | None
    seed: int
    hyperparameters: dict[str, float | int]
    training_key: str


def fine_tuned_model_name(*, base: str, tenant: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's shape, ``ft:<base>:<org>:<suffix>:<id>`` (suffix empty when not given)."""
    return f"ft:{base}:{tenant}:{suffix or ''}:{job_id}"


def run_job(job_id: str, *, settings: Settings, worker_id: str) -> None:
    factory = session_factory(settings.resolved_database_url)
    with session_scope(factory) as session:
        claim = jobs.claim(session, job_id, worker_id)
    if claim is None:
        log.info("job %s: not queued any more (duplicate delivery or cancelled); skipping", job_id)
        return

    store = ArtifactStore(settings.resolved_artifacts_dir)
    reporter = JobReporter(factory, claim, interval_s=settings.heartbeat_interval_s)
    try:
        with session_scope(factory) as session:
            plan = _plan(session, job_id)
        reporter.message(f"Fine-tuning job started (attempt {claim.attempt}).")
        _train(plan, settings=settings, store=store, reporter=reporter)
    except JobError as err:
        _fail(factory, claim, err)
    except ModelUnavailable as err:
        _fail(factory, claim, JobError("model_not_available", str(err), "model"))
    except reporter.stopped_errors() as stopped:
        reporter.record_stop(stopped)
    except MemoryError:
        _fail(
            factory,
            claim,
            JobError("out_of_memory", "The job ran out of memory; try a smaller batch_size."),
        )
    except Exception as err:  # noqa: BLE001 - classified below
        if _is_transient(err):
            _release(factory, claim)
            raise
        if _is_cuda_oom(err):
            _fail(
                factory,
                claim,
                JobError("out_of_memory", "The GPU ran out of memory; try a smaller batch_size."),
            )
            return
        log.exception("job %s failed", job_id)
        _fail(
            factory,
            claim,
            JobError("training_error", f"Training failed: {type(err).__name__}: {err}"),
        )


def _plan(session: Session, job_id: str) -> JobPlan:
    job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
    tenant = session.execute(select(Tenant).where(Tenant.id == job.tenant_id)).scalar_one()
    training = session.execute(
        select(File).where(File.id == job.training_file, File.tenant_id == job.tenant_id)
    ).scalar_one_or_none()
    if training is None or training.deleted_at is not None:
        raise JobError(
            "invalid_training_file",
            f"Training file {job.training_file} no longer exists.",
            "training_file",
        )
    return JobPlan(
        job_id=job.id,
        tenant_name=tenant.name,
        model=job.model,
        suffix=job.suffix,
        seed=job.seed,
        hyperparameters=dict(job.resolved_hyperparameters),
        training_key=training.storage_key or file_key(training.id),
    )


def _train(
    plan: JobPlan, *, settings: Settings, store: ArtifactStore, reporter: JobReporter
) -> None:
    # Heavy imports stay here so that importing the worker package (e.g. for the sweeper) is cheap.
    import torch

    from defense.config import FinetuneConfig, LoraSettings
    from defense.finetune import fit, total_steps
    from defense.lora import attach_lora
    from defense.modeling import load_base

    if settings.worker_threads:
        torch.set_num_threads(settings.worker_threads)
    from worker.examples import training_set

    limits = DatasetLimits.from_settings(settings)
    data = training_set(iter_examples(store.read_stream(plan.training_key), limits))
    examples = data.examples
    if not examples:
        raise JobError(
            "invalid_training_file", "The training file has no valid examples.", "training_file"
        )
    try:
        config = FinetuneConfig(
            method="sft",
            n_epochs=int(plan.hyperparameters["n_epochs"]),
            batch_size=int(plan.hyperparameters["batch_size"]),
            learning_rate=settings.base_learning_rate
            * float(plan.hyperparameters["learning_rate_multiplier"]),
            seed=plan.seed,
            max_seq_len=settings.max_seq_len,
            checkpoint_every=settings.checkpoint_every,
        )
    except (KeyError, ValueError) as err:
        raise JobError(
            "invalid_hyperparameters", f"Invalid hyperparameters: {err}", "hyperparameters"
        ) from err

    base_path = resolve_base_model(plan.model, settings=settings, progress=reporter.message)
    base, tokenizer = load_base(base_path)
    base.to(torch.device(_device(settings.device, torch)))  # type: ignore[arg-type]
    model = attach_lora(base, LoraSettings(), seed=plan.seed)

    job_dir = store.path(job_dir_key(plan.job_id))
    reporter.begin(
        total_steps=total_steps(len(examples), config),
        checkpoint_name=lambda step: (
            fine_tuned_model_name(
                base=plan.model, tenant=plan.tenant_name, suffix=plan.suffix, job_id=plan.job_id
            )
            + f":ckpt-step-{step}"
        ),
        store_root=store.root,
        keep=settings.keep_checkpoints,
    )
    result = fit(
        model,
        tokenizer,
        examples,
        config,
        checkpoint_dir=job_dir / "checkpoints",
        resume=True,
        on_step=reporter.on_step,
        on_checkpoint=reporter.on_checkpoint,
        should_stop=reporter.should_stop,
    )
    adapter_dir = job_dir / "adapter"
    tmp = job_dir / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(
        str(tmp)
    )  # safetensors PEFT directory: PeftModel.from_pretrained loads it
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    tmp.rename(adapter_dir)
    reporter.succeed(
        fine_tuned_model=fine_tuned_model_name(
            base=plan.model, tenant=plan.tenant_name, suffix=plan.suffix, job_id=plan.job_id
        ),
        trained_tokens=int(result.trained_tokens),
    )


def _device(name: str, torch: object) -> str:
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"  # type: ignore[attr-defined]


def _is_transient(err: BaseException) -> bool:
    from worker.tasks import TRANSIENT_ERRORS

    return isinstance(err, TRANSIENT_ERRORS)


def _is_cuda_oom(err: BaseException) -> bool:
    return type(err).__name__ == "OutOfMemoryError"


def _fail(factory: sessionmaker[Session], claim: jobs.Claim, err: JobError) -> None:
    with session_scope(factory) as session:
        if jobs.fail(session, claim, code=err.code, message=err.message, param=err.param):
            job = session.execute(select(Job).where(Job.id == claim.job_id)).scalar_one()
            jobs.add_event(session, job, f"Job failed: {err.message}", level="error")


def _release(factory: sessionmaker[Session], claim: jobs.Claim) -> None:
    try:
        with session_scope(factory) as session:
            jobs.release(session, claim)
    except Exception:  # noqa: BLE001 - the database may be the thing that is down; the sweeper recovers
        log.warning(
            "job %s: could not release the claim; the sweeper will re-queue it", claim.job_id
        )


def job_adapter_dir(store_root: Path, job_id: str) -> Path:
    return store_root / job_dir_key(job_id) / "adapter"
