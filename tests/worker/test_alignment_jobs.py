"""Alignment job creation (core.alignments, shared by the CLI and the API) and waiting jobs."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import jobs
from core.accounts import get_or_create_tenant
from core.alignments import (
    create_alignment_job,
    estimate_alignment,
    resolve_alignment_hyperparameters,
)
from core.catalog import ensure_builtin_models
from core.config import Settings
from core.models import Job, JobEvent, Model, now
from core.policy import resolve_served_model
from defense.config import AlignConfig
from worker.finetune import policy_view as _policy_view


def _setup(settings: Settings, factory: sessionmaker[Session]) -> str:
    with factory.begin() as s:
        ensure_builtin_models(s, settings.resolved_models_dir)
        return get_or_create_tenant(s, "admin").id


def test_creates_the_pending_model_and_the_job_once(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    tenant = _setup(settings, session_factory)
    with session_factory.begin() as s:
        job = create_alignment_job(
            s,
            base="tiny-gpt2",
            method="antibody",
            hyperparameters={"steps": 3},
            tenant_id=tenant,
            settings=settings,
        )
        job_id = job.id
        again = create_alignment_job(
            s, base="tiny-gpt2", method="antibody", hyperparameters={}, tenant_id=tenant,
            settings=settings,
        )  # fmt: skip
        assert again.id == job_id  # still queued: no second alignment
    with session_factory.begin() as s:
        row = s.scalar(select(Model).where(Model.id == "tiny-gpt2-antibody"))
        assert row is not None
        assert (row.kind, row.status, row.base_model, row.method, row.alignment_job_id) == (
            "aligned",
            "pending",
            "tiny-gpt2",
            "antibody",
            job_id,
        )
        stored = s.scalar(select(Job).where(Job.id == job_id))
        assert stored is not None
        job = stored
        assert (job.kind, job.model, job.defense, job.status, job.tenant_id) == (
            "alignment",
            "tiny-gpt2",
            "antibody",
            "queued",
            tenant,
        )
        assert job.defense_params["steps"] == 3
        assert job.defense_params["batch_size"] == settings.alignment_batch_size
        first = s.scalar(select(JobEvent).where(JobEvent.job_id == job_id))
        assert first is not None and "Estimated time" in first.message
        # A user job on the base now waits for it.
        served = resolve_served_model(s, model_id="tiny-gpt2", settings=settings)
        assert served.waiting_for == "tiny-gpt2-antibody"


def test_rejects_bad_requests(settings: Settings, session_factory: sessionmaker[Session]) -> None:
    tenant = _setup(settings, session_factory)
    with session_factory.begin() as s:
        cases: list[tuple[str, str, dict[str, Any] | None, str]] = [
            ("tiny-gpt2", "lisa", None, "method"),
            ("nope", "sft", None, "not a registered base model"),
            ("tiny-gpt2", "sft", {"stepz": 1}, "unknown"),
            ("tiny-gpt2", "sft", {"steps": 0}, "steps"),
        ]
        for base, method, hyperparameters, message in cases:
            with pytest.raises(ValueError, match=message):
                create_alignment_job(
                    s,
                    base=base,
                    method=method,
                    hyperparameters=hyperparameters,
                    tenant_id=tenant,
                    settings=settings,
                )


def test_hyperparameters_and_estimate(settings: Settings) -> None:
    resolved = resolve_alignment_hyperparameters({"rho": 0.2}, settings=settings)
    assert resolved["steps"] == settings.alignment_steps and resolved["rho"] == 0.2
    with pytest.raises(ValueError, match="rho must be a number"):
        resolve_alignment_hyperparameters({"rho": "x"}, settings=settings)
    quick = estimate_alignment(
        base="smollm2-135m-instruct", method="sft", steps=10, samples=8, batch_size=8,
        settings=settings,
    )  # fmt: skip
    slow = estimate_alignment(
        base="smollm2-135m-instruct", method="antibody", steps=10, samples=8, batch_size=8,
        settings=settings,
    )  # fmt: skip
    assert 0 < quick.seconds < slow.seconds  # antibody: 4 passes a step and harmful answers
    assert "Estimated time" in slow.text and "base-model answers" in slow.text
    with_retain = estimate_alignment(
        base="smollm2-135m-instruct", method="sft", steps=10, samples=8, batch_size=8,
        settings=settings, retain_samples=16,
    )  # fmt: skip
    assert with_retain.seconds > quick.seconds and "base-model answers" in with_retain.text
    contrasted = estimate_alignment(
        base="smollm2-135m-instruct", method="antibody", steps=10, samples=8, batch_size=8,
        settings=settings, perturbed_retain=8,
    )  # fmt: skip
    assert contrasted.seconds > slow.seconds  # one more pass over a batch of retain answers
    assert resolved["retain_samples"] == settings.alignment_retain_samples
    assert "lambda_refusal" not in resolved  # no method named: no method's own defaults
    antibody = resolve_alignment_hyperparameters({}, settings=settings, method="antibody")
    assert antibody["lambda_refusal"] == settings.alignment_lambda_refusal
    assert antibody["perturbed_retain"] == settings.alignment_perturbed_retain
    assert antibody["rho"] == settings.alignment_rho != AlignConfig().rho  # LoRA-scaled radius
    booster = resolve_alignment_hyperparameters({}, settings=settings, method="booster")
    assert "lambda_refusal" not in booster and booster["rho"] == settings.alignment_rho
    assert "rho" not in resolve_alignment_hyperparameters({}, settings=settings, method="sft")
    assert resolve_alignment_hyperparameters(
        {"rho": 0.1}, settings=settings, method="antibody"
    )["rho"] == 0.1  # fmt: skip
    asked = resolve_alignment_hyperparameters(
        {"lambda_refusal": 0.5}, settings=settings, method="antibody"
    )
    assert asked["lambda_refusal"] == 0.5
    with pytest.raises(ValueError, match="retain_samples must be >= 0"):
        resolve_alignment_hyperparameters({"retain_samples": -1}, settings=settings)


def test_waiting_gives_the_attempt_back(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    tenant = _setup(settings, session_factory)
    with session_factory.begin() as s:
        job = Job(
            tenant_id=tenant, model="tiny-gpt2", training_file="file-x", seed=1,
            status="queued", enqueued_at=now(),
        )  # fmt: skip
        s.add(job)
        s.flush()
        job_id = job.id
    with session_factory.begin() as s:
        claim = jobs.claim(s, job_id, "w")
        assert claim is not None and claim.attempt == 1
        assert jobs.wait(s, claim)
        assert not jobs.wait(s, claim)  # no longer ours
    with session_factory.begin() as s:
        row = s.scalar(select(Job).where(Job.id == job_id))
        assert row is not None and (row.status, row.attempt, row.worker_id) == ("queued", 0, None)


def test_policy_of_the_served_model_wins_over_the_named_one() -> None:
    named = Model(id="base", policy={"serve": "x", "defense": "sft", "allow_sft": True, "tau": 2})
    served = Model(id="x", policy={"tau": 0.5})
    view = _policy_view(named, served)
    assert view is not None and view.id == "x"
    assert view.policy == {"defense": "sft", "allow_sft": True, "tau": 0.5}
    assert _policy_view(None, None) is None
