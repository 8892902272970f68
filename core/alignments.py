"""Alignment jobs (stage 1 of the defense): creating one, and how long one will take.

Shared by the CLI (``ftaas models align``, ``ftaas serve``'s first start) and the API
(``POST /admin/alignments``), so all three create the same rows: the pending aligned model
``<base>-<method>`` and a ``kind="alignment"`` job owned by the admin's tenant, ``model`` = the
base, ``defense`` = the method, ``defense_params`` = the resolved hyperparameters. The caller
commits, then sends ``TASK_RUN_JOB`` with the job id (docs/defended-jobs.md). No torch here.

Choices the contract leaves open (each named where it is made):

* An alignment of the same base and method that is still queued, running or paused is returned
  instead of creating a second one (a restarted ``ftaas serve`` or a retried request).
* A ``ready`` aligned row stays ``ready`` while a re-alignment runs, so users keep training on the
  current version until the new adapter replaces it; a new or ``error`` row becomes ``pending``.
* Hyperparameter names: ``steps``, ``batch_size``, ``learning_rate``, ``samples``,
  ``retain_samples`` (benign retain pairs in the safe set, 0 = none), ``seed`` (filled from
  settings), plus the method knobs of ``defense.config.AlignConfig`` passed through by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import jobs
from core.config import Settings
from core.model_status import ModelStatus, set_model_status
from core.models import Job, JobEvent, Model, now
from core.policy import ALIGNMENT_METHODS, aligned_model_id

ALIGNMENT_KIND = "alignment"
"""``jobs.kind`` of an alignment job (a user's job is ``fine_tune``)."""

ALIGNMENT_TRAINING_FILE = "advbench:alignment"
"""``jobs.training_file`` of an alignment job (the column is required; the data is built in)."""

ACTIVE = (jobs.JobStatus.QUEUED, jobs.JobStatus.RUNNING, jobs.JobStatus.PAUSED)

# Knobs of defense.config.AlignConfig an admin may set, with the type each must have.
_INT_KEYS = (
    "steps",
    "batch_size",
    "samples",
    "retain_samples",
    "perturbed_retain",
    "seed",
    "grad_accum",
    "warmup_steps",
)
_FLOAT_KEYS = (
    "learning_rate",
    "weight_decay",
    "max_grad_norm",
    "rho",
    "eta",
    "ema",
    "lambda_refusal",
    "booster_lambda",
    "vaccine_rho",
)
_STR_KEYS = ("lambda_form", "lr_schedule")


def resolve_alignment_hyperparameters(
    requested: dict[str, Any] | None, *, settings: Settings, method: str | None = None
) -> dict[str, Any]:
    """The hyperparameters an alignment runs with: the requested ones (type-checked) over the
    settings' defaults (``rho`` only for ``method`` antibody and booster, the methods with a
    simulated harmful step; ``lambda_refusal`` and ``perturbed_retain`` only for antibody: the
    other methods have no refusal term). Range checks are ``AlignConfig``'s, in the worker; a
    bad value fails the job there with the field's name. Raises ``ValueError`` for unknown names
    or wrong types."""
    requested = dict(requested or {})
    unknown = sorted(set(requested) - set(_INT_KEYS + _FLOAT_KEYS + _STR_KEYS))
    if unknown:
        raise ValueError(
            f"unknown alignment hyperparameter(s): {', '.join(unknown)}; known: "
            f"{', '.join(_INT_KEYS + _FLOAT_KEYS + _STR_KEYS)}"
        )
    for key, value in requested.items():
        if key in _INT_KEYS and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        if key in _FLOAT_KEYS and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{key} must be a number, got {value!r}")
        if key in _STR_KEYS and not isinstance(value, str):
            raise ValueError(f"{key} must be a string, got {value!r}")
    resolved: dict[str, Any] = {
        "steps": settings.alignment_steps,
        "batch_size": settings.alignment_batch_size,
        "learning_rate": settings.alignment_learning_rate,
        "samples": settings.alignment_samples,
        "retain_samples": settings.alignment_retain_samples,
        "seed": 0,
    }
    if method in ("antibody", "booster"):
        resolved["rho"] = settings.alignment_rho
    if method == "antibody":
        resolved["lambda_refusal"] = settings.alignment_lambda_refusal
        resolved["perturbed_retain"] = settings.alignment_perturbed_retain
    resolved.update(requested)
    for key in ("steps", "batch_size", "samples"):
        if int(resolved[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {resolved[key]!r}")
    if int(resolved["retain_samples"]) < 0:
        raise ValueError(f"retain_samples must be >= 0, got {resolved['retain_samples']!r}")
    return resolved


def find_aligned(session: Session, *, base: str, method: str) -> Model | None:
    return session.scalar(select(Model).where(Model.id == aligned_model_id(base, method)))


def active_alignment(session: Session, *, base: str, method: str) -> Job | None:
    return session.scalar(
        select(Job)
        .where(
            Job.kind == ALIGNMENT_KIND,
            Job.model == base,
            Job.defense == method,
            Job.status.in_(ACTIVE),
        )
        .order_by(Job.seq.desc())
        .limit(1)
    )


def create_alignment_job(
    session: Session,
    *,
    base: str,
    method: str,
    hyperparameters: dict[str, Any] | None,
    tenant_id: str,
    settings: Settings,
) -> Job:
    """Insert (flush, not commit) the pending aligned model row and the alignment job, whose first
    event is the time estimate (the caller adds its own "created" event).

    Returns the existing job when an alignment of ``base`` with ``method`` is already queued,
    running or paused. Raises ``ValueError`` for an unknown method, a base that is not a
    registered base model, or bad hyperparameters.
    """
    if method not in ALIGNMENT_METHODS:
        raise ValueError(f"method must be one of {', '.join(ALIGNMENT_METHODS)}; got {method!r}")
    base_row = session.scalar(select(Model).where(Model.id == base))
    if base_row is None or base_row.kind != "base":
        raise ValueError(f"{base!r} is not a registered base model")
    resolved = resolve_alignment_hyperparameters(hyperparameters, settings=settings, method=method)
    existing = active_alignment(session, base=base, method=method)
    if existing is not None:
        return existing

    aligned_id = aligned_model_id(base, method)
    row = find_aligned(session, base=base, method=method)
    if row is None:
        row = Model(
            id=aligned_id,
            source="aligned",
            kind="aligned",
            base_model=base,
            method=method,
            status=ModelStatus.PENDING,
            owned_by="system",
        )
        session.add(row)
    elif row.status != ModelStatus.READY:
        set_model_status(row, ModelStatus.PENDING)
    job = Job(
        tenant_id=tenant_id,
        kind=ALIGNMENT_KIND,
        model=base,
        training_file=ALIGNMENT_TRAINING_FILE,
        status=jobs.JobStatus.QUEUED,
        hyperparameters=dict(hyperparameters or {}),
        resolved_hyperparameters=resolved,
        method="supervised",
        defense=method,
        defense_params=resolved,
        served_model=aligned_id,
        seed=int(resolved["seed"]),
        enqueued_at=now(),
    )
    session.add(job)
    session.flush()
    row.alignment_job_id = job.id
    estimate = estimate_alignment(
        base=base,
        method=method,
        steps=int(resolved["steps"]),
        samples=int(resolved["samples"]),
        retain_samples=int(resolved["retain_samples"]),
        batch_size=int(resolved["batch_size"]),
        settings=settings,
        perturbed_retain=int(resolved.get("perturbed_retain", 0)),
    )
    jobs.add_event(
        session,
        job,
        f"Alignment of {base} with {method} into {aligned_id}. {estimate.text}",
        data={"estimated_seconds": estimate.seconds, "basis": estimate.basis},
    )
    session.flush()
    return job


# --- time estimate ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Speed:
    """Seconds measured on the reference CPU (bench/screening.py's machine line): one alignment
    step of each method at batch size 8, one generated token of a batch of 8 prompts."""

    step_s: dict[str, float]
    token_s: float
    load_s: float


# Measured on this project's reference box (AMD EPYC, 2 cores, torch's default threads) while
# another CPU-bound benchmark shared it, with the service defaults (max_seq_len 512, 128-token
# harmful answers): SmolLM2 antibody 85-170 s a step (median ~90 s; the two long harmful-view
# passes dominate), sft ~10 s, generation ~1.1 s per new token for a batch of 8. An idle box of
# the same kind is faster, a GPU far faster; the worker's own progress events replace this guess
# with the measured pace once steps run. Per-step time scales about linearly with batch size.
_REFERENCE_BATCH = 8
_SPEEDS: dict[str, _Speed] = {
    "smollm2-135m-instruct": _Speed(
        step_s={"antibody": 90.0, "booster": 85.0, "vaccine": 20.0, "sft": 10.0},
        token_s=1.1,
        load_s=10.0,
    ),
    "tiny-gpt2": _Speed(
        step_s={"antibody": 4.0, "booster": 3.5, "vaccine": 1.0, "sft": 0.5},
        token_s=0.015,
        load_s=2.0,
    ),
}
_HARMFUL_NEW_TOKENS = 128  # defense.attack.HARMFUL_MAX_NEW_TOKENS
_RETAIN_NEW_TOKENS = 48  # defense.retain.RETAIN_ANSWER_TOKENS
RETAIN_REQUESTS = 240
"""len(defense.retain.all_retain_prompts()) (core may not import defense; a test checks they
agree): the most retain requests an alignment can ask for."""


@dataclass(frozen=True)
class AlignmentEstimate:
    seconds: int
    text: str
    basis: str


def estimate_alignment(
    *,
    base: str,
    method: str,
    steps: int,
    samples: int,
    batch_size: int,
    settings: Settings,
    retain_samples: int = 0,
    perturbed_retain: int = 0,
) -> AlignmentEstimate:
    """Wall-clock estimate of an alignment on a CPU like the reference one: generating the
    harmful answers (when the method needs them) and the retain answers once (each only while
    its cache is cold), the steps, and the safety evaluation. Unknown models use SmolLM2's
    figures scaled by nothing: a guess, said so. Antibody's ``perturbed_retain`` examples count
    as that share of a batch's pass more, of the step's four."""
    speed = _SPEEDS.get(base)
    basis = f"measured for {base} on a 2-core CPU"
    if speed is None:
        speed, basis = _SPEEDS["smollm2-135m-instruct"], "SmolLM2-135M's CPU figures (a guess)"
    per_step = speed.step_s.get(method, speed.step_s["antibody"]) * batch_size / _REFERENCE_BATCH
    if method == "antibody" and perturbed_retain:
        per_step *= 1 + perturbed_retain / batch_size / 4
    generation = 0.0
    cache = settings.resolved_models_dir / base / "harmful_pairs.jsonl"
    if method in ("antibody", "booster") and not cache.exists():
        batches = math.ceil(samples / 8)
        generation = batches * _HARMFUL_NEW_TOKENS * speed.token_s
    if retain_samples and not (settings.resolved_models_dir / base / "retain_pairs.jsonl").exists():
        generation += (
            math.ceil(min(retain_samples, RETAIN_REQUESTS) / 8) * _RETAIN_NEW_TOKENS * speed.token_s
        )
    eval_prompts = settings.safety_eval_harmful + settings.safety_eval_benign
    evaluation = math.ceil(eval_prompts / 8) * settings.safety_eval_max_new_tokens * speed.token_s
    seconds = int(speed.load_s + generation + steps * per_step + evaluation)
    text = (
        f"Estimated time on a CPU: about {_human(seconds)} "
        f"({steps} steps x {per_step:.1f} s"
        + (f", base-model answers {_human(int(generation))}" if generation else "")
        + f", safety evaluation {_human(int(evaluation))}; {basis}; a GPU is far faster)."
    )
    return AlignmentEstimate(seconds=seconds, text=text, basis=basis)


def _human(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def alignment_progress(session: Session, row: Model) -> dict[str, Any] | None:
    """For a ``pending`` aligned model: its alignment job's step, percent and time left, from the
    job row and its latest metrics event (``None`` for any other model)."""
    if row.status != "pending" or row.kind != "aligned":
        return None
    job = None
    if row.alignment_job_id:
        job = session.scalar(select(Job).where(Job.id == row.alignment_job_id))
    if job is None and row.base_model and row.method:
        job = active_alignment(session, base=row.base_model, method=row.method)
    if job is None:
        return None
    latest = session.scalar(
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.type == "metrics")
        .order_by(JobEvent.seq.desc())
        .limit(1)
    )
    data = (latest.data if latest is not None else None) or {}
    step = int(data.get("step", job.step or 0))
    total = int(data.get("total_steps", job.total_steps or 0))
    finish = data.get("estimated_finish", job.estimated_finish)
    eta = max(0, int(finish) - now()) if finish else None
    return {
        "job_id": job.id,
        "job_status": job.status,
        "step": step,
        "total_steps": total,
        "percent": round(100.0 * step / total, 1) if total else 0.0,
        "estimated_finish": int(finish) if finish else None,
        "eta_s": eta,
        "eta": _human(eta) if eta is not None else None,
    }
