"""A fine-tuning job as short named steps (``run_fine_tune``):

1. ``plan``: resolve the provider policy (which model is served, which defense with which
   parameters) and record it with the settings that shape the run (``jobs.run_config``) at the
   first start; every resume reads what was recorded, so a policy or settings change made while
   the job was paused or queued never changes a run half-way (its checkpoints would not match).
2. ``load_data``: the training (and validation) examples.
3. ``finetune_config``: ``defense.config.FinetuneConfig`` from the hyperparameters and the plan.
4. ``prepare_model``: the served model (the aligned adapter itself is trained, or a fresh LoRA).
5. ``starting_safety``: the starting model's scores (kept across resumes, or reused).
6. ``train``: ``defense.finetune.fit`` with the reporter (heartbeats, metrics, checkpoints scored
   and gated, stop requests).
7. ``conclude``: gate the final model, flag the most down-weighted lines, save the adapter
   atomically, succeed (or fail ``safety_gate``).

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

from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import jobs
from core.config import Settings
from core.datasets import DatasetLimits, iter_examples
from core.db import session_scope
from core.models import File, Job, JobEvent, Model, Tenant
from core.policy import (
    Defense,
    ReleaseGate,
    release_gate,
    resolve_defense,
    resolve_served_model,
)
from core.storage import ArtifactStore, file_key, job_dir_key
from worker.adapters import save_adapter
from worker.alignment import lisa_guide
from worker.errors import JobFailed
from worker.models import load_model, locate_model, resolve_device
from worker.reporting import JobReporter
from worker.safety import SafetyEvaluator, describe

# Settings that shape a run's result: recorded with the job at its first start (run_config).
RUN_SETTINGS = (
    "base_learning_rate",
    "max_seq_len",
    "checkpoint_every",
    "lisa_rho",
    "safety_eval_harmful",
    "safety_eval_benign",
    "safety_eval_max_new_tokens",
    "flag_relative_weight",
    "flagged_lines_top_k",
    "alignment_samples",
    "alignment_retain_samples",
)

LISA_CYCLES = 3


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
    gate: ReleaseGate = field(default_factory=lambda: ReleaseGate(margin=0.0, ceiling=1.0))
    start_safety: dict[str, Any] | None = None
    served_safety: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def fine_tuned_model_name(*, base: str, tenant: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's shape, ``ft:<base>:<org>:<suffix>:<id>`` (suffix empty when not given)."""
    return f"ft:{base}:{tenant}:{suffix or ''}:{job_id}"


def run_fine_tune(
    job_id: str, *, settings: Settings, store: ArtifactStore, reporter: JobReporter
) -> None:
    with session_scope(reporter.factory) as session:
        plan = plan_job(session, job_id, settings=settings, claim=reporter.claim)
    if plan is None:
        return  # waiting for a pre-aligned model; re-sent when it is ready
    settings = settings.model_copy(update=plan.settings)
    reporter.message(f"Fine-tuning job started (attempt {reporter.claim.attempt}).")
    data, validation = load_data(plan, settings=settings, store=store)
    config = finetune_config(plan, settings=settings, n_examples=len(data.examples))
    model, tokenizer, aligned = prepare_model(plan, settings=settings, reporter=reporter)
    evaluator = SafetyEvaluator(settings, validation=validation, max_seq_len=settings.max_seq_len)
    start = starting_safety(plan, evaluator, model, tokenizer, aligned=aligned, reporter=reporter)
    result = train(
        plan,
        model,
        tokenizer,
        data.examples,
        config,
        evaluator=evaluator,
        start=start,
        settings=settings,
        store=store,
        reporter=reporter,
    )
    conclude(
        plan,
        model,
        tokenizer,
        data,
        result,
        evaluator=evaluator,
        start=start,
        aligned=aligned,
        settings=settings,
        store=store,
        reporter=reporter,
    )


# --- 1. plan -------------------------------------------------------------------------------------


def plan_job(
    session: Session, job_id: str, *, settings: Settings, claim: jobs.Claim
) -> JobPlan | None:
    job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
    tenant = session.execute(select(Tenant).where(Tenant.id == job.tenant_id)).scalar_one()
    training = _file(session, job, job.training_file, "training_file")
    validation = (
        _file(session, job, job.validation_file, "validation_file") if job.validation_file else None
    )
    recorded = job.run_config
    if not recorded:
        served = resolve_served_model(session, model_id=job.model, settings=settings)
        if served.waiting_for is not None:
            _wait_for(session, job, claim, served.waiting_for)
            return None
        named = session.scalar(select(Model).where(Model.id == job.model))
        served_row = session.scalar(select(Model).where(Model.id == served.model_id))
        defense = resolve_defense(policy_view(named, served_row), settings=settings)
        gate = release_gate(tenant, settings=settings)
        recorded = jobs.record_run_config(
            session,
            job.id,
            {
                "served_model": served.model_id,
                "defense": defense.method,
                "defense_params": dict(defense.params),
                "gate_margin": gate.margin,
                "gate_max_harmful": gate.ceiling,
                "settings": {key: getattr(settings, key) for key in RUN_SETTINGS},
            },
        )
    served_row = session.scalar(select(Model).where(Model.id == recorded["served_model"]))
    return JobPlan(
        job_id=job.id,
        tenant_name=tenant.name,
        model=job.model,
        suffix=job.suffix,
        seed=job.seed,
        hyperparameters=dict(job.resolved_hyperparameters),
        training_key=training.storage_key or file_key(training.id),
        served_model=str(recorded["served_model"]),
        defense=Defense(str(recorded["defense"]), dict(recorded["defense_params"])),
        validation_key=(validation.storage_key or file_key(validation.id)) if validation else None,
        # A run recorded before the absolute ceiling existed keeps only its margin.
        gate=ReleaseGate(
            margin=float(recorded["gate_margin"]),
            ceiling=float(recorded.get("gate_max_harmful", 1.0)),
        ),
        start_safety=(job.safety or {}).get("start"),
        served_safety=served_row.safety if served_row is not None else None,
        settings=dict(recorded.get("settings", {})),
    )


def _wait_for(session: Session, job: Job, claim: jobs.Claim, aligned_id: str) -> None:
    waited = session.scalar(select(Model).where(Model.id == aligned_id))
    if waited is None or waited.status != "pending":
        status = "missing" if waited is None else waited.status
        raise JobFailed(
            "model_not_available",
            f"The pre-aligned model {aligned_id!r} serving {job.model!r} is not "
            f"available (status {status}).",
            "model",
        )
    if jobs.wait(session, claim):
        _event_once(session, job, f"Waiting for the pre-aligned model {aligned_id} to be ready.")


def _file(session: Session, job: Job, file_id: str, param: str) -> File:
    row = session.execute(
        select(File).where(File.id == file_id, File.tenant_id == job.tenant_id)
    ).scalar_one_or_none()
    if row is None or row.deleted_at is not None:
        raise JobFailed(f"invalid_{param}", f"{param} {file_id} no longer exists.", param)
    return row


def policy_view(named: Model | None, served: Model | None) -> Model | None:
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


# --- 2-3. data and config ------------------------------------------------------------------------


def load_data(plan: JobPlan, *, settings: Settings, store: ArtifactStore) -> tuple[Any, list[Any]]:
    from worker.examples import training_set

    limits = DatasetLimits.from_settings(settings)
    data = training_set(
        iter_examples(store.read_stream(plan.training_key), limits),
        max_seq_len=settings.max_seq_len,
    )
    if not data.examples:
        raise JobFailed(
            "invalid_training_file", "The training file has no valid examples.", "training_file"
        )
    validation: list[Any] = []
    if plan.validation_key is not None:
        validation = training_set(
            iter_examples(store.read_stream(plan.validation_key), limits),
            max_seq_len=settings.max_seq_len,
        ).examples
    return data, validation


def finetune_config(plan: JobPlan, *, settings: Settings, n_examples: int) -> Any:
    from defense.config import FinetuneConfig

    defense = plan.defense
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
            config = scaled_lisa(config, n_examples, rho=settings.lisa_rho)
    except (KeyError, ValueError) as err:
        raise JobFailed(
            "invalid_hyperparameters", f"Invalid hyperparameters: {err}", "hyperparameters"
        ) from err
    return config


def scaled_lisa(config: Any, n_examples: int, *, rho: float) -> Any:
    """Lisa's 100 guide : 900 user steps per cycle, scaled to the job: three cycles with the same
    1 : 9 ratio (Lisa's own counts assume thousands of steps; a choice, as in bench/defense.py),
    and the provider's proximal coefficient ``rho`` (``Settings.lisa_rho``)."""
    from defense.finetune import user_steps_per_epoch

    user_steps = config.n_epochs * user_steps_per_epoch(n_examples, config)
    finetune_steps = max(1, -(-user_steps // LISA_CYCLES))
    return replace(
        config,
        lisa_finetune_steps=finetune_steps,
        lisa_align_steps=max(1, round(finetune_steps / 9)),
        lisa_rho=rho,
    )


# --- 4-5. model and starting safety ----------------------------------------------------------------


def prepare_model(
    plan: JobPlan, *, settings: Settings, reporter: JobReporter
) -> tuple[Any, Any, bool]:
    import torch

    from defense.config import LoraSettings
    from defense.lora import attach_lora

    if settings.worker_threads:
        torch.set_num_threads(settings.worker_threads)
    source = locate_model(plan.served_model, settings=settings, progress=reporter.message)
    model, tokenizer = load_model(source, trainable=True, device=resolve_device(settings.device))
    if not source.is_aligned:
        model = attach_lora(model, LoraSettings(), seed=plan.seed)
    model.train()
    defense = plan.defense
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
    return model, tokenizer, source.is_aligned


def unaligned_warning(plan: JobPlan, start: dict[str, Any], *, aligned: bool) -> str | None:
    """ "No measurable refusal ability" is judged by the higher of the two judges' scores: the
    learned judge reads a model that only babbles (tiny-gpt2) as not complying, so harmless,
    while the keyword judge sees that it never refuses in words."""
    refusals_unseen = max(
        float(start["harmful_score"]), float(start.get("harmful_score_keyword") or 0.0)
    )
    return plan.gate.unaligned_warning(aligned=aligned, start_harmful_score=refusals_unseen)


def starting_safety(
    plan: JobPlan,
    evaluator: SafetyEvaluator,
    model: Any,
    tokenizer: Any,
    *,
    aligned: bool,
    reporter: JobReporter,
) -> dict[str, Any]:
    """The starting model's scores: kept from an earlier attempt, reused from the served model's
    row when computed with the same sizes, else evaluated now (and cached on that row)."""
    if plan.start_safety and evaluator.sizes.matches(plan.start_safety):
        start = plan.start_safety
    elif evaluator.sizes.matches(plan.served_safety):
        assert plan.served_safety is not None
        start = {k: v for k, v in plan.served_safety.items() if k != "validation_loss"}
        start["reused_from"] = plan.served_model
        if evaluator.validation:
            start.update(evaluator.evaluate(model, tokenizer, safety=False))
    else:
        reporter.message(f"Evaluating the safety of {plan.served_model} before training.")
        start = evaluator.evaluate(model, tokenizer)
        cached = {k: v for k, v in start.items() if k != "validation_loss"}
        with session_scope(reporter.factory) as session:
            row = session.scalar(select(Model).where(Model.id == plan.served_model))
            if row is not None:
                row.safety = cached
    if start is not plan.start_safety:
        reporter.message(f"Starting model safety: {describe(start)}.", data={"step": 0, **start})
    gate = plan.gate
    job_safety: dict[str, Any] = {"start": start, "margin": gate.margin, "ceiling": gate.ceiling}
    warning = unaligned_warning(plan, start, aligned=aligned)
    if warning:
        job_safety["unaligned_warning"] = warning
        reporter.message(warning, level="warn", data={"unaligned_warning": True})
    reporter.record(safety=job_safety)
    return start


# --- 6-7. train and conclude -----------------------------------------------------------------------


def train(
    plan: JobPlan,
    model: Any,
    tokenizer: Any,
    examples: list[Any],
    config: Any,
    *,
    evaluator: SafetyEvaluator,
    start: dict[str, Any],
    settings: Settings,
    store: ArtifactStore,
    reporter: JobReporter,
) -> Any:
    from defense.finetune import fit, total_steps

    def assess(step: int) -> tuple[dict[str, Any], bool | None]:
        scores = evaluator.evaluate(model, tokenizer)
        message = plan.gate.decide(
            harmful_score=float(scores["harmful_score"]),
            start_harmful_score=float(start["harmful_score"]),
        )
        return scores, message is None

    checkpoints = store.path(job_dir_key(plan.job_id)) / "checkpoints"
    name = _name(plan)
    reporter.begin(
        total_steps=total_steps(len(examples), config),
        checkpoint_name=lambda step: f"{name}:ckpt-step-{step}",
        store_root=store.root,
        keep=settings.keep_checkpoints,
        assess=assess,
        checkpoint_dir=checkpoints,
        checkpoint_every=config.checkpoint_every,
    )
    guide = lisa_guide(settings, plan.model) if plan.defense.method == "lisa" else []
    return fit(
        model,
        tokenizer,
        examples,
        config,
        checkpoint_dir=checkpoints,
        resume=True,
        on_step=reporter.on_step,
        on_checkpoint=reporter.on_checkpoint,
        should_stop=reporter.should_stop,
        guide=guide,
    )


def conclude(
    plan: JobPlan,
    model: Any,
    tokenizer: Any,
    data: Any,
    result: Any,
    *,
    evaluator: SafetyEvaluator,
    start: dict[str, Any],
    aligned: bool,
    settings: Settings,
    store: ArtifactStore,
    reporter: JobReporter,
) -> None:
    from worker.flagging import flag_lines

    reporter.tick()  # no final write for a job that is no longer ours
    save_adapter(model, tokenizer, store.path(job_dir_key(plan.job_id)) / "adapter")
    final, _ = reporter.checkpoint_safety(result.step)
    if final is None:
        final = evaluator.evaluate(model, tokenizer)
    gate = plan.gate.decide(
        harmful_score=float(final["harmful_score"]),
        start_harmful_score=float(start["harmful_score"]),
    )
    job_safety = {
        "start": start,
        "margin": plan.gate.margin,
        "ceiling": plan.gate.ceiling,
        "final": final,
        "threshold": round(plan.gate.threshold(float(start["harmful_score"])), 6),
        "deployable": gate is None,
        "gate": gate,
    }
    warning = unaligned_warning(plan, start, aligned=aligned)
    if warning:
        job_safety["unaligned_warning"] = warning
    flagged = None
    if plan.defense.method == "antibody":
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
    if gate is not None:
        raise JobFailed("safety_gate", f"The fine-tuned model is not deployable: {gate}.")
    reporter.succeed(fine_tuned_model=_name(plan), trained_tokens=int(result.trained_tokens))


def _name(plan: JobPlan) -> str:
    return fine_tuned_model_name(
        base=plan.model, tenant=plan.tenant_name, suffix=plan.suffix, job_id=plan.job_id
    )
