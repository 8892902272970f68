"""Alignment jobs (stage 1): turn a base model into its pre-aligned model ``<base>-<method>``.

Flow (docs/defended-jobs.md): the AdvBench alignment split's first ``samples`` prompts, each with
its refusal (``defense.refusals``), plus ``retain_samples`` benign requests (``defense.retain``)
with the unaligned base model's own answers (cached at ``models_dir/<base>/retain_pairs.jsonl``):
together the safe view, for every method; for Antibody and Booster also the base model's own
greedy answers to the harmful prompts (the harmful view, generated once and cached at
``models_dir/<base>/harmful_pairs.jsonl``) -> ``defense.align.align`` on a fresh LoRA adapter, with
the job's reporter (progress with time left, heartbeat, cancel/pause, resumable checkpoints) ->
the adapter saved atomically to ``models_dir/<aligned id>/adapter`` -> safety scores of the aligned
model before any fine-tuning -> the ``models`` row made ``ready`` in the same transaction that
marks the job succeeded -> every queued fine-tuning job waiting for it is sent again.

Choices where the references are uncertain:

* Harmful answers that the keyword judge calls refusals are dropped (``defense.attack``): they
  teach no harm. If none is left, the job fails (``alignment_data``) rather than aligning a
  method that needs harmful data without it.
* The LoRA adapter is ``LoraSettings()`` (defense's default, r=8 on attention), initialised from
  the job's seed; ``max_seq_len`` and ``checkpoint_every`` come from the worker's settings.
* On failure or cancellation the aligned row goes back to ``ready`` if it still has an earlier
  adapter, else to ``error`` (as the API does on cancel), and waiting jobs are re-sent so they
  do not wait forever: they then train the base model, or fail if a model policy names this
  aligned model explicitly (``model_not_available``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import jobs
from core.alignments import ALIGNMENT_KIND, resolve_alignment_hyperparameters
from core.config import Settings
from core.db import session_scope
from core.model_status import ModelStatus, release_pending, set_model_status
from core.models import Job, Model, now
from core.policy import aligned_model_id, resolve_served_model
from core.storage import ArtifactStore, job_dir_key
from worker.adapters import save_adapter
from worker.errors import JobFailed
from worker.models import resolve_base_model, resolve_device
from worker.reporting import JobReporter
from worker.safety import SafetyEvaluator, describe

HARMFUL_PAIRS_FILE = "harmful_pairs.jsonl"
RETAIN_PAIRS_FILE = "retain_pairs.jsonl"
GENERATION_BATCH_SIZE = 8

# AlignConfig fields an alignment job's hyperparameters may set directly (others are mapped).
_PASSTHROUGH = (
    "grad_accum",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "rho",
    "eta",
    "ema",
    "lambda_refusal",
    "perturbed_retain",
    "booster_lambda",
    "vaccine_rho",
    "lambda_form",
    "lr_schedule",
)


# A deterministic failure of an alignment job (bad hyperparameters, no usable data).
AlignmentError = JobFailed


@dataclass(frozen=True)
class AlignmentPlan:
    job_id: str
    base: str
    method: str
    aligned_id: str
    seed: int
    hyperparameters: dict[str, Any]


def alignment_prompts(samples: int) -> list[str]:
    from defense.assets import advbench_split

    return list(advbench_split().alignment[:samples])


def safe_view(prompts: Sequence[str]) -> list[Any]:
    """Each harmful prompt paired with its refusal (dataset index i gets ``refusal_for(i)``)."""
    from defense.data import Example
    from defense.refusals import refusal_for

    return [Example.from_prompt_completion(p, refusal_for(i)) for i, p in enumerate(prompts)]


def lisa_guide(settings: Settings, base: str) -> list[Any]:
    """Lisa's guide data in a user job: the alignment safe set, as the alignment job built it.

    The refusals of ``settings.alignment_samples`` prompts, plus the retain pairs the alignment
    job cached for ``base`` (``retain_pairs.jsonl``). A user job never generates them: where no
    alignment job has written that cache (or the provider set ``alignment_retain_samples`` to
    0), the guide is the refusals alone, which pulls the model towards refusing benign requests
    too (bench/results/defense.tuning.md, item 1)."""
    from defense.attack import cached_pairs, read_pair_cache
    from defense.retain import retain_prompts

    retain = cached_pairs(
        retain_prompts(settings.alignment_retain_samples),
        read_pair_cache(retain_pairs_path(settings, base)),
    )
    return safe_view(alignment_prompts(settings.alignment_samples)) + retain


def harmful_pairs_path(settings: Settings, base: str) -> Path:
    return settings.resolved_models_dir / base / HARMFUL_PAIRS_FILE


def retain_pairs_path(settings: Settings, base: str) -> Path:
    return settings.resolved_models_dir / base / RETAIN_PAIRS_FILE


def base_model_pairs(
    make_pairs: Callable[..., list[Any]],
    prompts: Sequence[str],
    what: str,
    model: Any,
    tokenizer: Any,
    *,
    cache: Path,
    base: str,
    message: Callable[[str], None],
) -> list[Any]:
    """``make_pairs``'s (prompt, unaligned base model's answer) examples, cached at ``cache``
    (``defense.attack.harmful_pairs`` or ``defense.retain.retain_pairs``); a cold cache is
    announced first, since generating the answers is the slow part on a CPU."""
    from defense.attack import read_pair_cache

    missing = [p for p in prompts if p not in read_pair_cache(cache)]
    if missing:
        message(
            f"Generating the unaligned {base}'s answers to {len(missing)} {what} "
            f"(once; cached at {cache})."
        )
    return make_pairs(prompts, model, tokenizer, cache_path=cache, batch_size=GENERATION_BATCH_SIZE)


def aligned_adapter_dir(settings: Settings, aligned_id: str) -> Path:
    return settings.resolved_models_dir / aligned_id / "adapter"


def plan_alignment(session: Session, job_id: str, *, settings: Settings) -> AlignmentPlan:
    job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
    try:
        params = resolve_alignment_hyperparameters(
            job.defense_params, settings=settings, method=job.defense
        )
    except ValueError as err:
        raise JobFailed("invalid_hyperparameters", str(err), "hyperparameters") from err
    return AlignmentPlan(
        job_id=job.id,
        base=job.model,
        method=job.defense,
        aligned_id=aligned_model_id(job.model, job.defense),
        seed=int(params.get("seed", job.seed)),
        hyperparameters=params,
    )


def align_config(plan: AlignmentPlan, *, settings: Settings) -> Any:
    from defense.config import AlignConfig

    params = plan.hyperparameters
    try:
        return AlignConfig(
            method=plan.method,  # type: ignore[arg-type]
            max_steps=int(params["steps"]),
            batch_size=int(params["batch_size"]),
            learning_rate=float(params["learning_rate"]),
            seed=plan.seed,
            max_seq_len=settings.max_seq_len,
            checkpoint_every=settings.checkpoint_every,
            **{key: params[key] for key in _PASSTHROUGH if key in params},
        )
    except (KeyError, TypeError, ValueError) as err:
        raise JobFailed(
            "invalid_hyperparameters", f"Invalid hyperparameters: {err}", "hyperparameters"
        ) from err


ALIGNMENT_RUN_SETTINGS = (
    "max_seq_len",
    "checkpoint_every",
    "safety_eval_harmful",
    "safety_eval_benign",
    "safety_eval_max_new_tokens",
)


@dataclass
class AlignmentData:
    prompts: list[str]
    refusals: list[Any]
    retain: list[Any]
    harmful: list[Any]

    @property
    def safe(self) -> list[Any]:
        return self.refusals + self.retain


def run_alignment(
    job_id: str,
    *,
    settings: Settings,
    store: ArtifactStore,
    reporter: JobReporter,
    send: Callable[[str, str], object],
) -> None:
    """Stage 1 as named steps: plan (recorded at the first start) -> base model -> data (the
    base model's own answers, cached) -> align (resumable) -> save, score and register."""
    plan, settings = start_alignment(job_id, settings=settings, reporter=reporter)
    config = align_config(plan, settings=settings)
    model, tokenizer = load_alignment_base(plan, settings=settings, reporter=reporter)
    data = alignment_data(plan, config, model, tokenizer, settings=settings, reporter=reporter)
    peft_model, result = align_model(
        plan, config, model, tokenizer, data, settings=settings, store=store, reporter=reporter
    )
    if register_aligned(
        plan, peft_model, tokenizer, data, result, settings=settings, reporter=reporter
    ):
        resend_waiting(reporter.factory, settings=settings, aligned_id=plan.aligned_id, send=send)


def start_alignment(
    job_id: str, *, settings: Settings, reporter: JobReporter
) -> tuple[AlignmentPlan, Settings]:
    """The plan and the settings it runs with: recorded at the first start, read on resumes."""
    with session_scope(reporter.factory) as session:
        plan = plan_alignment(session, job_id, settings=settings)
        _ensure_pending_row(session, plan)
        recorded = jobs.record_run_config(
            session,
            job_id,
            {
                "hyperparameters": plan.hyperparameters,
                "seed": plan.seed,
                "settings": {key: getattr(settings, key) for key in ALIGNMENT_RUN_SETTINGS},
            },
        )
    plan = replace(
        plan, hyperparameters=dict(recorded["hyperparameters"]), seed=int(recorded["seed"])
    )
    return plan, settings.model_copy(update=dict(recorded.get("settings", {})))


def load_alignment_base(
    plan: AlignmentPlan, *, settings: Settings, reporter: JobReporter
) -> tuple[Any, Any]:
    import torch

    from defense.modeling import load_base

    if settings.worker_threads:
        torch.set_num_threads(settings.worker_threads)
    base_path = resolve_base_model(plan.base, settings=settings, progress=reporter.message)
    model, tokenizer = load_base(base_path)
    model.to(torch.device(resolve_device(settings.device)))  # type: ignore[arg-type]
    return model, tokenizer


def alignment_data(
    plan: AlignmentPlan,
    config: Any,
    model: Any,
    tokenizer: Any,
    *,
    settings: Settings,
    reporter: JobReporter,
) -> AlignmentData:
    from defense.attack import harmful_pairs
    from defense.retain import retain_pairs, retain_prompts

    prompts = alignment_prompts(int(plan.hyperparameters["samples"]))
    retain = base_model_pairs(
        retain_pairs,
        # A job queued before retain pairs existed resolved no such key: it keeps refusals only.
        retain_prompts(int(plan.hyperparameters.get("retain_samples", 0))),
        "benign retain requests",
        model,
        tokenizer,
        cache=retain_pairs_path(settings, plan.base),
        base=plan.base,
        message=reporter.message,
    )
    if config.uses_perturbed_retain and not retain:
        raise JobFailed(
            "alignment_data",
            f"perturbed_retain = {config.perturbed_retain} needs benign retain pairs, but "
            f"{plan.base} has none (retain_samples is 0, or every retain answer was a refusal); "
            "set perturbed_retain to 0 or retain_samples above 0.",
            "hyperparameters",
        )
    harmful: list[Any] = []
    if config.uses_harmful_data:
        harmful = base_model_pairs(
            harmful_pairs,
            prompts,
            "harmful prompts",
            model,
            tokenizer,
            cache=harmful_pairs_path(settings, plan.base),
            base=plan.base,
            message=reporter.message,
        )
        if not harmful:
            raise JobFailed(
                "alignment_data",
                f"{plan.base} refused every harmful prompt, so {plan.method} has no harmful "
                "answers to align against; use method 'sft' or 'vaccine'.",
            )
    return AlignmentData(prompts, safe_view(prompts), retain, harmful)


def align_model(
    plan: AlignmentPlan,
    config: Any,
    model: Any,
    tokenizer: Any,
    data: AlignmentData,
    *,
    settings: Settings,
    store: ArtifactStore,
    reporter: JobReporter,
) -> tuple[Any, Any]:
    from defense.align import align
    from defense.align import total_steps as align_total_steps
    from defense.config import LoraSettings
    from defense.lora import attach_lora

    peft_model = attach_lora(model, LoraSettings(), seed=plan.seed)
    reporter.message(
        f"Aligning {plan.base} with {plan.method}: {len(data.refusals)} refusal, "
        f"{len(data.retain)} retain and {len(data.harmful)} harmful examples, "
        f"{config.max_steps} steps of batch {config.batch_size}."
    )
    checkpoints = store.path(job_dir_key(plan.job_id)) / "checkpoints"
    reporter.begin(
        total_steps=align_total_steps(len(data.safe), config),
        checkpoint_name=lambda step: f"{plan.aligned_id}:ckpt-step-{step}",
        store_root=store.root,
        keep=settings.keep_checkpoints,
        checkpoint_dir=checkpoints,
        checkpoint_every=config.checkpoint_every,
    )
    result = align(
        peft_model,
        tokenizer,
        data.safe,
        data.harmful,
        config,
        checkpoint_dir=checkpoints,
        resume=True,
        on_step=reporter.on_step,
        on_checkpoint=reporter.on_checkpoint,
        should_stop=reporter.should_stop,
        retain=data.retain,
    )
    return peft_model, result


def register_aligned(
    plan: AlignmentPlan,
    peft_model: Any,
    tokenizer: Any,
    data: AlignmentData,
    result: Any,
    *,
    settings: Settings,
    reporter: JobReporter,
) -> bool:
    """Save the adapter atomically, score it, and make the model row ``ready`` in the transaction
    that marks the job succeeded. False: the job was cancelled at the last moment."""
    from defense.config import LoraSettings

    reporter.tick()
    adapter_dir = aligned_adapter_dir(settings, plan.aligned_id)
    save_adapter(peft_model, tokenizer, adapter_dir)
    reporter.message(f"Evaluating the safety of {plan.aligned_id} before any fine-tuning.")
    safety = SafetyEvaluator(settings, max_seq_len=settings.max_seq_len).evaluate(
        peft_model, tokenizer
    )
    base = plan.base
    lineage = {
        "base": base,
        "method": plan.method,
        "hyperparameters": plan.hyperparameters,
        "data": {
            "source": "AdvBench (pyrit adv_bench.prompt)",
            "split": "alignment",
            "n": len(data.prompts),
            "n_harmful": len(data.harmful),
            "harmful_answers": f"greedy answers of the unaligned {base}" if data.harmful else None,
            "refusals": "defense/data/refusals.txt, line i mod 100 for prompt i",
            "n_retain": len(data.retain),
            "retain": f"defense.retain requests, greedy answers of the unaligned {base}"
            if data.retain
            else None,
        },
        "seed": plan.seed,
        "adapter": {"r": LoraSettings().r, "alpha": LoraSettings().alpha},
    }
    with session_scope(reporter.factory) as session:
        if not jobs.finish(
            session,
            reporter.claim,
            fine_tuned_model=plan.aligned_id,
            trained_tokens=int(result.trained_tokens),
            step=reporter.total_steps,
            estimated_finish=None,
        ):
            return False  # cancelled at the last moment: the API released the row
        row = _ensure_pending_row(session, plan)
        row.kind, row.source = "aligned", "aligned"
        set_model_status(row, ModelStatus.READY)
        row.base_model, row.method = plan.base, plan.method
        row.adapter_path = row.path = str(adapter_dir)
        row.alignment_job_id, row.lineage, row.safety = plan.job_id, lineage, safety
        job = session.execute(select(Job).where(Job.id == plan.job_id)).scalar_one()
        jobs.add_event(
            session,
            job,
            f"The job has successfully completed. {plan.aligned_id} is ready ({describe(safety)}).",
            type="metrics",
            data={"model": plan.aligned_id, **safety},
        )
    return True


def release_aligned_row(
    factory: sessionmaker[Session],
    *,
    job_id: str,
    settings: Settings,
    send: Callable[[str, str], object],
) -> None:
    """After a failed or cancelled alignment: its pending row goes back to ``ready`` (an earlier
    adapter is still there) or ``error``, and the jobs that waited for it are re-sent."""
    with session_scope(factory) as session:
        job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
        if job.kind != ALIGNMENT_KIND or job.status not in (
            jobs.JobStatus.FAILED,
            jobs.JobStatus.CANCELLED,
        ):
            return
        aligned_id = aligned_model_id(job.model, job.defense)
        row = session.scalar(select(Model).where(Model.id == aligned_id))
        if row is not None:
            release_pending(row)
    resend_waiting(factory, settings=settings, aligned_id=aligned_id, send=send)


def resend_waiting(
    factory: sessionmaker[Session],
    *,
    settings: Settings,
    aligned_id: str,
    send: Callable[[str, str], object],
) -> list[str]:
    """Send again every queued fine-tuning job whose model resolves to (or resolved to)
    ``aligned_id`` and no longer waits. A duplicate message is harmless: the claim decides."""
    ready: list[str] = []
    with session_scope(factory) as session:
        row = session.scalar(select(Model).where(Model.id == aligned_id))
        base = row.base_model if row is not None else None
        queued = session.scalars(
            select(Job)
            .where(Job.status == jobs.JobStatus.QUEUED, Job.kind != ALIGNMENT_KIND)
            .order_by(Job.seq)
        )
        for job in queued:
            served = resolve_served_model(session, model_id=job.model, settings=settings)
            if served.waiting_for is not None:
                continue
            if served.model_id == aligned_id or job.model in (aligned_id, base):
                jobs.touch_enqueued(session, job.id)
                ready.append(job.id)
    for job_id in ready:
        send(job_id, "fine_tune")
    return ready


def _ensure_pending_row(session: Session, plan: AlignmentPlan) -> Model:
    """The aligned row, created ``pending`` if the API (or CLI) did not create it."""
    row = session.scalar(select(Model).where(Model.id == plan.aligned_id))
    if row is None:
        row = Model(
            id=plan.aligned_id,
            source="aligned",
            kind="aligned",
            base_model=plan.base,
            method=plan.method,
            status=ModelStatus.PENDING,
            owned_by="system",
            alignment_job_id=plan.job_id,
            created_at=now(),
        )
        session.add(row)
        session.flush()
    return row
