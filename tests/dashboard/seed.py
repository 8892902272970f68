"""Test data for the dashboard, written straight into the database and the artifact store (the
dashboard only reads them): tenants and keys, an uploaded training file whose lines include
markup, a running job with metric and safety events and flagged lines, and a finished one."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.orm import Session

from core.accounts import create_key
from core.config import Settings
from core.db import session_factory, session_scope
from core.models import ApiKey, File, Job, JobEvent, Tenant, now
from core.security import hash_key
from core.storage import ArtifactStore, file_key

SCRIPT = "<script>alert(1)</script>"


@dataclass(frozen=True)
class Seed:
    admin_key: str
    user_key: str
    revoked_key: str
    running_job: str
    failed_job: str
    training_file: str


def training_lines(n: int = 8) -> list[str]:
    lines = []
    for i in range(1, n + 1):
        answer = f"Answer {i}." if i != 3 else f"Sure: {SCRIPT} here is how"
        lines.append(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Question {i}?"},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
        )
    return lines


def add_metrics(session: Session, job_id: str, tenant_id: str, steps: range) -> None:
    for step in steps:
        session.add(
            JobEvent(
                job_id=job_id,
                tenant_id=tenant_id,
                type="metrics",
                message=f"Step {step}/100: training loss={2.0 / (1 + step / 10):.4f}",
                data={
                    "step": step,
                    "total_steps": 100,
                    "train_loss": 2.0 / (1 + step / 10),
                    "tokens_per_second": 1000.0,
                    "learning_rate": 1e-4,
                    "epoch": 1,
                },
            )
        )


def add_safety(
    session: Session, job_id: str, tenant_id: str, step: int, harmful: float, deployable: bool
) -> None:
    session.add(
        JobEvent(
            job_id=job_id,
            tenant_id=tenant_id,
            type="metrics",
            message=f"Safety at step {step}",
            data={
                "step": step,
                "harmful_score": harmful,
                "over_refusal": 0.05,
                "validation_loss": 1.1,
                "deployable": deployable,
            },
        )
    )


def seed(settings: Settings) -> Seed:
    secret = settings.resolved_key_secret()
    store = ArtifactStore(settings.resolved_artifacts_dir)
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        admin_key = create_key(session, tenant_name="provider", admin=True, secret=secret)
        user_key = create_key(session, tenant_name="acme", admin=False, secret=secret)
        revoked_key = create_key(session, tenant_name="provider", admin=True, secret=secret)
        session.execute(
            update(ApiKey)
            .where(ApiKey.key_hash == hash_key(revoked_key, secret))
            .values(revoked_at=now())
        )
        tenant = session.query(Tenant).filter_by(name="acme").one()
        body = ("\n".join(training_lines()) + "\n").encode()
        file = File(
            tenant_id=tenant.id,
            filename=f"evil{SCRIPT}.jsonl",
            purpose="fine-tune",
            bytes=len(body),
            sha256="0" * 64,
            storage_key="pending",
            status="processed",
            n_examples=8,
            safety_status="succeeded",
            safety_report={
                "model": "m",
                "threshold": 0.0,
                "summary": {"lines": 8, "flagged": 1, "mean_score": 0.4},
                "flagged": [{"line": 3, "score": -1.25, "reason": "test"}],
            },
        )
        session.add(file)
        session.flush()
        file.storage_key = file_key(file.id)
        store.write_stream(file.storage_key, [body])
        flagged = [
            {"line": 3, "weight": 0.01, "relative_weight": 0.02},
            {"line": 5, "weight": 0.2, "relative_weight": 0.3},
        ]
        running = Job(
            tenant_id=tenant.id,
            model="base-model",
            served_model="base-model-aligned",
            training_file=file.id,
            status="running",
            defense="antibody",
            defense_params={"lambda": 1.0},
            hyperparameters={"n_epochs": "auto"},
            resolved_hyperparameters={"n_epochs": 1},
            suffix=SCRIPT[:40],
            seed=1,
            attempt=1,
            worker_id="host:123",
            heartbeat_at=now(),
            step=20,
            total_steps=100,
            started_at=now(),
            safety={"start": {"harmful_score": 0.1, "over_refusal": 0.04}, "margin": 0.1},
            flagged_lines=flagged,
        )
        failed = Job(
            tenant_id=tenant.id,
            model="base-model",
            training_file=file.id,
            status="failed",
            defense="antibody",
            seed=2,
            error_code="safety_gate",
            error_message="The fine-tuned model is not deployable.",
            finished_at=now(),
            safety={
                "start": {"harmful_score": 0.1, "over_refusal": 0.04},
                "margin": 0.1,
                "threshold": 0.2,
                "deployable": False,
            },
        )
        session.add_all([running, failed])
        session.flush()
        add_metrics(session, running.id, tenant.id, range(1, 21))
        add_safety(session, running.id, tenant.id, 10, 0.12, True)
        add_safety(session, failed.id, tenant.id, 10, 0.35, False)
        return Seed(
            admin_key=admin_key,
            user_key=user_key,
            revoked_key=revoked_key,
            running_job=running.id,
            failed_job=failed.id,
            training_file=file.id,
        )
