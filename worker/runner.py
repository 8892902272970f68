"""Turn one job row into a training run: the only place that maps a job onto defense/ configs.

Flow: claim the job (a conditional UPDATE; no row means a duplicate delivery or a cancelled job)
-> dispatch on ``job.kind``:

* ``alignment``: ``worker.alignment.run_alignment`` (stage 1, the provider's pre-aligned model).
* ``fine_tune``: resolve the provider policy (``core.policy``: which model is served, which
  defense runs with which parameters; a job whose pre-aligned model is still pending goes back to
  ``queued`` and is re-sent when it is ready) -> load the served model (the aligned adapter itself
  is trained, or a fresh LoRA on a base) -> safety scores of the starting model -> ``fit`` with a
  reporter that heartbeats, throttles metrics events, scores and gates every checkpoint, and asks
  the row whether to stop -> flag the most down-weighted training lines -> store the adapter ->
  succeed, or fail with ``safety_gate`` when the final model is not deployable.

Deterministic errors fail the job with a clear message and are not retried; transient ones
(database, broker) release the job and re-raise so Celery retries with backoff.

Choices where the contract is uncertain:

* The defense is resolved from the served model's policy merged over the named model's (the
  served model's keys win; ``serve`` is not inherited), so a provider can set policy on either.
* A job whose explicitly served model (``policy.serve``) is in ``error`` fails with
  ``model_not_available`` instead of waiting forever.
* The final model's scores are those of the final checkpoint (``fit`` always writes one at the
  end), so they are computed once; a resume that finds the final checkpoint already scored
  reuses its row.
* The starting scores are computed once per job (``job.safety["start"]``, kept across resumes)
  and cached on the served model's row (``models.safety``) for later jobs with the same sizes.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import jobs
from core.alignments import ALIGNMENT_KIND
from core.config import Settings
from core.datasets import DatasetLimits, iter_examples
from core.db import session_factory, session_scope
from core.models import File, Job, JobEvent, Model, Tenant
from core.policy import (
    Defense,
    ReleaseGate,
    release_gate,
    resolve_defense,
    resolve_served_model,
)
from core.queue import make_celery, send_run_job
from core.storage import ArtifactStore, file_key, job_dir_key
from worker.alignment import AlignmentError, lisa_guide, release_aligned_row
from worker.models import ModelUnavailable, load_model, locate_model, resolve_device
from worker.reporting import JobReporter
from worker.safety import SafetyEvaluator, describe

log = logging.getLogger(__name__)

Send = Callable[[str], object]


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
    served_model: str = ""
    defense: Defense = field(default_factory=lambda: Defense("sft"))
    validation_key: str | None = None
    gate: ReleaseGate = field(default_factory=lambda: ReleaseGate(margin=0.0, ceiling=0.0))
    start_safety: dict[str, Any] | None = None
    served_safety: dict[str, Any] | None = None


def fine_tuned_model_name(*, base: str, tenant: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's shape, ``ft:<base>:<org>:<suffix>:<id>`` (suffix empty when not given)."""
    return f"ft:{base}:{tenant}:{suffix or ''}:{job_id}"


def run_job(job_id: str, *, settings: Settings, worker_id: str, send: Send | None = None) -> None:
    factory = session_factory(settings.resolved_database_url)
    with session_scope(factory) as session:
        claim = jobs.claim(session, job_id, worker_id)
    if claim is None:
        log.info("job %s: not queued any more (duplicate delivery or cancelled); skipping", job_id)
        return

    send = send or _default_sender(settings)
    store = ArtifactStore(settings.resolved_artifacts_dir)
    reporter = JobReporter(factory, claim, interval_s=settings.heartbeat_interval_s)
    kind = "fine_tune"
    try:
        with session_scope(factory) as session:
            kind = session.execute(select(Job.kind).where(Job.id == job_id)).scalar_one()
        if kind == ALIGNMENT_KIND:
            from worker.alignment import run_alignment

            reporter.message(f"Alignment job started (attempt {claim.attempt}).")
            run_alignment(job_id, settings=settings, store=store, reporter=reporter, send=send)
            return
        with session_scope(factory) as session:
            plan = _plan(session, job_id, settings=settings, claim=claim)
        if plan is None:
            return  # waiting for a pre-aligned model; re-sent when it is ready
        reporter.message(f"Fine-tuning job started (attempt {claim.attempt}).")
        _train(plan, settings=settings, store=store, reporter=reporter)
    except (JobError, AlignmentError) as err:
        _fail(factory, claim, JobError(err.code, err.message, err.param))
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
        else:
            log.exception("job %s failed", job_id)
            _fail(
                factory,
                claim,
                JobError("training_error", f"Training failed: {type(err).__name__}: {err}"),
            )
    finally:
        if kind == ALIGNMENT_KIND:
            _after_alignment(factory, job_id=job_id, settings=settings, send=send)


def _after_alignment(
    factory: sessionmaker[Session], *, job_id: str, settings: Settings, send: Send
) -> None:
    try:
        release_aligned_row(factory, job_id=job_id, settings=settings, send=send)
    except Exception:  # noqa: BLE001 - the sweeper re-sends waiting jobs; never mask the job's error
        log.warning("alignment %s: could not release its model row", job_id, exc_info=True)


def _default_sender(settings: Settings) -> Send:
    app = None

    def send(job_id: str) -> None:
        nonlocal app
        app = app or make_celery(settings)
        send_run_job(app, job_id)

    return send


# --- plan: policy resolution ---------------------------------------------------------------------


def _plan(
    session: Session, job_id: str, *, settings: Settings, claim: jobs.Claim
) -> JobPlan | None:
    job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
    tenant = session.execute(select(Tenant).where(Tenant.id == job.tenant_id)).scalar_one()
    training = _file(session, job, job.training_file, "training_file")
    validation = (
        _file(session, job, job.validation_file, "validation_file") if job.validation_file else None
    )
    served = resolve_served_model(session, model_id=job.model, settings=settings)
    if served.waiting_for is not None:
        waited = session.scalar(select(Model).where(Model.id == served.waiting_for))
        if waited is None or waited.status != "pending":
            status = "missing" if waited is None else waited.status
            raise JobError(
                "model_not_available",
                f"The pre-aligned model {served.waiting_for!r} serving {job.model!r} is not "
                f"available (status {status}).",
                "model",
            )
        if jobs.wait(session, claim):
            _event_once(
                session, job, f"Waiting for the pre-aligned model {served.waiting_for} to be ready."
            )
        return None
    named = session.scalar(select(Model).where(Model.id == job.model))
    served_row = session.scalar(select(Model).where(Model.id == served.model_id))
    defense = resolve_defense(_policy_view(named, served_row), settings=settings)
    start = (job.safety or {}).get("start")
    return JobPlan(
        job_id=job.id,
        tenant_name=tenant.name,
        model=job.model,
        suffix=job.suffix,
        seed=job.seed,
        hyperparameters=dict(job.resolved_hyperparameters),
        training_key=training.storage_key or file_key(training.id),
        served_model=served.model_id,
        defense=defense,
        validation_key=(validation.storage_key or file_key(validation.id)) if validation else None,
        gate=release_gate(tenant, settings=settings),
        start_safety=start,
        served_safety=served_row.safety if served_row is not None else None,
    )


def _file(session: Session, job: Job, file_id: str, param: str) -> File:
    row = session.execute(
        select(File).where(File.id == file_id, File.tenant_id == job.tenant_id)
    ).scalar_one_or_none()
    if row is None or row.deleted_at is not None:
        raise JobError(f"invalid_{param}", f"{param} {file_id} no longer exists.", param)
    return row


def _policy_view(named: Model | None, served: Model | None) -> Model | None:
    """A detached model whose policy is the served model's over the named model's."""
    if named is None and served is None:
        return None
    merged = {k: v for k, v in ((named.policy if named else None) or {}).items() if k != "serve"}
    merged.update((served.policy if served else None) or {})
    return Model(id=(served or named).id, policy=merged)  # type: ignore[union-attr]


def _event_once(session: Session, job: Job, message: str) -> None:
    last = session.scalar(
        select(JobEvent.message)
        .where(JobEvent.job_id == job.id)
        .order_by(JobEvent.seq.desc())
        .limit(1)
    )
    if last != message:
        jobs.add_event(session, job, message)


# --- fine-tuning ------------------------------------------------------------------------------------


def _train(
    plan: JobPlan, *, settings: Settings, store: ArtifactStore, reporter: JobReporter
) -> None:
    # Heavy imports stay here so that importing the worker package (e.g. for the sweeper) is cheap.
    import torch

    from defense.config import FinetuneConfig, LoraSettings
    from defense.finetune import fit, total_steps
    from defense.lora import attach_lora
    from worker.examples import training_set
    from worker.flagging import flag_lines

    if settings.worker_threads:
        torch.set_num_threads(settings.worker_threads)

    limits = DatasetLimits.from_settings(settings)
    data = training_set(
        iter_examples(store.read_stream(plan.training_key), limits),
        max_seq_len=settings.max_seq_len,
    )
    if not data.examples:
        raise JobError(
            "invalid_training_file", "The training file has no valid examples.", "training_file"
        )
    validation = []
    if plan.validation_key is not None:
        validation = training_set(
            iter_examples(store.read_stream(plan.validation_key), limits),
            max_seq_len=settings.max_seq_len,
        ).examples
    defense = plan.defense
    guide = []
    if defense.method == "lisa":
        guide = lisa_guide(settings, plan.model)
    try:
        config = FinetuneConfig(
            method=defense.method,  # type: ignore[arg-type]
            n_epochs=int(plan.hyperparameters["n_epochs"]),
            batch_size=int(plan.hyperparameters["batch_size"]),
            learning_rate=settings.base_learning_rate
            * float(plan.hyperparameters["learning_rate_multiplier"]),
            seed=plan.seed,
            max_seq_len=settings.max_seq_len,
            checkpoint_every=settings.checkpoint_every,
            tau=float(defense.params.get("tau", 1.0)),
        )
        if defense.method == "lisa":
            config = _scaled_lisa(config, len(data.examples), rho=settings.lisa_rho)
    except (KeyError, ValueError) as err:
        raise JobError(
            "invalid_hyperparameters", f"Invalid hyperparameters: {err}", "hyperparameters"
        ) from err

    source = locate_model(plan.served_model, settings=settings, progress=reporter.message)
    device = resolve_device(settings.device)
    model, tokenizer = load_model(source, trainable=True, device=device)
    if not source.is_aligned:
        model = attach_lora(model, LoraSettings(), seed=plan.seed)
    model.train()
    reporter.record(
        served_model=plan.served_model, defense=defense.method, defense_params=defense.params
    )
    served_text = f"the pre-aligned {plan.served_model}" if source.is_aligned else plan.served_model
    params = ", ".join(f"{k}={v}" for k, v in defense.params.items())
    reporter.message(
        f"Training {served_text} with the {defense.method} defense ("
        + (f"{params}; " if params else "")
        + "provider policy).",
        data={
            "served_model": plan.served_model,
            "defense": defense.method,
            "defense_params": defense.params,
        },
    )

    evaluator = SafetyEvaluator(settings, validation=validation, max_seq_len=settings.max_seq_len)
    start = _start_safety(plan, evaluator, model, tokenizer, settings=settings, reporter=reporter)
    gate = plan.gate
    job_safety: dict[str, Any] = {"start": start, "margin": gate.margin, "ceiling": gate.ceiling}
    warning = gate.unaligned_warning(
        aligned=source.is_aligned, start_harmful_score=float(start["harmful_score"])
    )
    if warning:
        job_safety["unaligned_warning"] = warning
        reporter.message(warning, level="warn", data={"unaligned_warning": True})
    reporter.record(safety=job_safety)

    def assess(step: int) -> tuple[dict[str, Any], bool | None]:
        scores = evaluator.evaluate(model, tokenizer)
        message = gate.decide(
            harmful_score=float(scores["harmful_score"]),
            start_harmful_score=float(start["harmful_score"]),
        )
        return scores, message is None

    job_dir = store.path(job_dir_key(plan.job_id))
    name = fine_tuned_model_name(
        base=plan.model, tenant=plan.tenant_name, suffix=plan.suffix, job_id=plan.job_id
    )
    reporter.begin(
        total_steps=total_steps(len(data.examples), config),
        checkpoint_name=lambda step: f"{name}:ckpt-step-{step}",
        store_root=store.root,
        keep=settings.keep_checkpoints,
        assess=assess,
    )
    result = fit(
        model,
        tokenizer,
        data.examples,
        config,
        checkpoint_dir=job_dir / "checkpoints",
        resume=True,
        on_step=reporter.on_step,
        on_checkpoint=reporter.on_checkpoint,
        should_stop=reporter.should_stop,
        guide=guide,
    )
    _save_adapter(model, tokenizer, job_dir)

    final, _ = reporter.checkpoint_safety(result.step)
    if final is None:
        final = evaluator.evaluate(model, tokenizer)
    verdict = gate.decide(
        harmful_score=float(final["harmful_score"]),
        start_harmful_score=float(start["harmful_score"]),
    )
    job_safety.update(
        final=final,
        threshold=round(gate.threshold(float(start["harmful_score"])), 6),
        deployable=verdict is None,
        gate=verdict,
    )
    flagged = None
    if defense.method == "antibody":
        flagged = flag_lines(
            data.line_numbers,
            result.sample_weights,
            result.relative_weights,
            threshold=settings.flag_relative_weight,
            top_k=settings.flagged_lines_top_k,
        )
        reporter.message(
            f"The defense down-weighted {len(flagged)} training line(s) below "
            f"{settings.flag_relative_weight:.2f} of their batch average"
            + (f" (lowest: line {flagged[0]['line']})." if flagged else "."),
            data={"flagged_lines": len(flagged)},
        )
    reporter.record(safety=job_safety, flagged_lines=flagged)
    if verdict is not None:
        raise JobError("safety_gate", f"The fine-tuned model is not deployable: {verdict}.")
    reporter.succeed(fine_tuned_model=name, trained_tokens=int(result.trained_tokens))


LISA_CYCLES = 3


def _scaled_lisa(config: Any, n_examples: int, *, rho: float) -> Any:
    """Lisa's 100 guide : 900 user steps per cycle, scaled to the job: three cycles with the same
    1 : 9 ratio (Lisa's own counts assume thousands of steps; a choice, as in bench/defense.py),
    and the provider's proximal coefficient ``rho`` (``Settings.lisa_rho``)."""
    from dataclasses import replace

    from defense.finetune import user_steps_per_epoch

    user_steps = config.n_epochs * user_steps_per_epoch(n_examples, config)
    finetune_steps = max(1, -(-user_steps // LISA_CYCLES))
    return replace(
        config,
        lisa_finetune_steps=finetune_steps,
        lisa_align_steps=max(1, round(finetune_steps / 9)),
        lisa_rho=rho,
    )


def _start_safety(
    plan: JobPlan,
    evaluator: SafetyEvaluator,
    model: Any,
    tokenizer: Any,
    *,
    settings: Settings,
    reporter: JobReporter,
) -> dict[str, Any]:
    """The starting model's scores: kept from an earlier attempt, reused from the served model's
    row when computed with the same sizes, else evaluated now (and cached on that row)."""
    if plan.start_safety and evaluator.sizes.matches(plan.start_safety):
        return plan.start_safety
    if evaluator.sizes.matches(plan.served_safety):
        assert plan.served_safety is not None
        start = {k: v for k, v in plan.served_safety.items() if k != "validation_loss"}
        start["reused_from"] = plan.served_model
        if evaluator.validation:
            start.update(evaluator.evaluate(model, tokenizer, safety=False))
    else:
        reporter.message(f"Evaluating the safety of {plan.served_model} before training.")
        start = evaluator.evaluate(model, tokenizer)
        cached = {k: v for k, v in start.items() if k != "validation_loss"}
        factory = reporter.factory
        with session_scope(factory) as session:
            row = session.scalar(select(Model).where(Model.id == plan.served_model))
            if row is not None:
                row.safety = cached
    reporter.message(
        f"Starting model safety: {describe(start)}.",
        data={"step": 0, **start},
    )
    return start


def _save_adapter(model: Any, tokenizer: Any, job_dir: Path) -> None:
    adapter_dir = job_dir / "adapter"
    tmp = job_dir / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(
        str(tmp)
    )  # safetensors PEFT directory: PeftModel.from_pretrained loads it
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    tmp.rename(adapter_dir)


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
