"""ORM models (SQLAlchemy 2.0, typed). The database row is the truth for every job.

Conventions:
- ``seq`` is an integer primary key that orders rows for cursor pagination; ``id`` is the public,
  prefixed identifier (``file-…``, ``ftjob-…``) that the API shows.
- Timestamps are Unix seconds (what OpenAI's objects carry), stored as BIGINT.
- Every row a user can see carries ``tenant_id``; services filter on it in every query.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments "INTEGER PRIMARY KEY"; PostgreSQL gets a 64-bit key.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(18).replace('-', 'a').replace('_', 'b')}"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("org"))
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # Per-tenant release policy, overriding settings (e.g. {"safety_gate_margin": 0.05}).
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    # Set while the provider has suspended the tenant: its keys get 403 on /v1.
    suspended_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Fair scheduling: when a worker last claimed one of this tenant's jobs (round-robin).
    last_claimed_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ApiKey(Base):
    """Only a keyed hash (HMAC-SHA256) and a short display prefix are stored; the key is shown once."""

    __tablename__ = "api_keys"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("key"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    tenant: Mapped[Tenant] = relationship(lazy="joined")


class File(Base):
    """Metadata of an uploaded file; the bytes live in the artifact store under ``storage_key``."""

    __tablename__ = "files"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("file"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16))  # uploaded | processed | error
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    line_errors: Mapped[list[Any] | None] = mapped_column(nullable=True)
    n_examples: Mapped[int] = mapped_column(Integer, default=0)
    n_errors: Mapped[int] = mapped_column(Integer, default=0)  # line_errors holds the first ones
    data_format: Mapped[str | None] = mapped_column(
        String(32), nullable=True
    )  # chat | prompt_completion
    # Upload-time screening: every line scored with the pre-aligned model's likelihood ratio.
    safety_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    safety_report: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    # Screening is recovered like jobs: its worker heartbeats; a silent one loses the file.
    safety_worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    safety_heartbeat_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    safety_attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    deleted_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Model(Base):
    """A base model a job may name: built in, registered by the provider, or (later) pre-aligned."""

    __tablename__ = "models"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(128), unique=True)  # the name users pass as `model`
    source: Mapped[str] = mapped_column(String(32))  # builtin | local | aligned
    path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="ready")  # pending | ready | error
    owned_by: Mapped[str] = mapped_column(String(64), default="system")
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    kind: Mapped[str] = mapped_column(String(16), default="base")  # base | aligned
    # An aligned model is its base model plus a LoRA adapter (stage 1 of the defense).
    base_model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    adapter_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    method: Mapped[str | None] = mapped_column(String(32), nullable=True)
    alignment_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Safety scores of this model before any user fine-tuning (harmful_score, over_refusal, ...).
    safety: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    # Provider policy for jobs naming this model: {"serve": <aligned id>, "defense": ...,
    # "allow_sft": bool, "tau": float}; settings supply what is not set here.
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_request", "tenant_id", "request_hash"),
        # The fair claim counts running and queued jobs per tenant.
        Index("ix_jobs_status_tenant", "status", "tenant_id"),
    )

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("ftjob"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(128))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(
        default=dict
    )  # as requested ("auto" kept)
    resolved_hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    method: Mapped[str] = mapped_column(String(32), default="supervised")
    kind: Mapped[str] = mapped_column(String(16), default="fine_tune")  # fine_tune | alignment
    defense: Mapped[str] = mapped_column(String(32), default="sft")
    defense_params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The model the job actually trains: the pre-aligned model serving `model`, when there is one.
    served_model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Starting-model and final safety scores, and the release-gate decision.
    safety: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    # Training lines the defense down-weighted most: [{"line", "weight", "relative_weight"}].
    flagged_lines: Mapped[list[Any] | None] = mapped_column(nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    enqueued_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_param: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # When the task message was last sent, and how often: the sweeper re-sends only after a grace.
    sent_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sends: Mapped[int] = mapped_column(Integer, default=0)
    # Environment errors (disk full, I/O): back to queued, not claimable before ``retry_at``.
    retry_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    env_retries: Mapped[int] = mapped_column(Integer, default=0)
    # The policy and settings the job started with; every resume trains with these.
    run_config: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    # Quotas: tokens estimated at create, running time summed over attempts, and its limit.
    estimated_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    running_s: Mapped[float] = mapped_column(Float, default=0.0)
    wall_clock_limit_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class JobEvent(Base):
    __tablename__ = "job_events"
    # The dashboard's charts read one job's metrics events in order.
    __table_args__ = (Index("ix_job_events_job_type_seq", "job_id", "type", "seq"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("ftevent"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    level: Mapped[str] = mapped_column(String(8), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step_number", name="uq_checkpoints_job_step"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("ftckpt"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    storage_key: Mapped[str] = mapped_column(String(512))
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(256))
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    safety: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    deployable: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class AdminAction(Base):
    """One state-changing admin action (dashboard or /admin route): who, what, when."""

    __tablename__ = "admin_actions"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("adminact"))
    at: Mapped[int] = mapped_column(BigInteger, default=now, index=True)
    # The acting admin key and its tenant's name, copied so the row outlives a deleted tenant.
    actor_key_id: Mapped[str] = mapped_column(String(64))
    actor_tenant: Mapped[str] = mapped_column(String(128))
    via: Mapped[str] = mapped_column(String(16))  # dashboard | api
    action: Mapped[str] = mapped_column(String(64), index=True)  # e.g. tenant.suspend
    target_type: Mapped[str] = mapped_column(String(32))  # tenant | api_key | model | job
    target_id: Mapped[str] = mapped_column(String(256))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Worker(Base):
    """A worker process as it reports itself (a registry with its own heartbeat, idle or busy)."""

    __tablename__ = "workers"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(256), unique=True)  # the Celery node name
    host: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[Any]] = mapped_column(default=list)
    device: Mapped[str | None] = mapped_column(String(128), nullable=True)
    memory_used: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # RSS bytes
    memory_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    current_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[int] = mapped_column(BigInteger, default=now)
    last_seen_at: Mapped[int] = mapped_column(BigInteger, default=now, index=True)
    stopped_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class DashboardSession(Base):
    """A signed-in browser session of the provider's dashboard. The cookie carries a random
    token; only its keyed hash is stored, so a database leak does not leak live sessions."""

    __tablename__ = "dashboard_sessions"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    api_key_id: Mapped[str] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    # Sent back in every state-changing request (form field or header), compared in constant time.
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class LoginFailure(Base):
    """One failed dashboard sign-in, keyed by the client address (the throttle counts them)."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_client_at", "client", "at"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    client: Mapped[str] = mapped_column(String(64))
    at: Mapped[int] = mapped_column(BigInteger, default=now)


class LineReview(Base):
    """An admin's decision on a training line the defense down-weighted: harmful or benign."""

    __tablename__ = "line_reviews"
    __table_args__ = (UniqueConstraint("job_id", "line", name="uq_line_reviews_job_line"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    line: Mapped[int] = mapped_column(Integer)
    decision: Mapped[str] = mapped_column(String(16))  # harmful | benign
    api_key_id: Mapped[str] = mapped_column(String(64))
    decided_at: Mapped[int] = mapped_column(BigInteger, default=now)


class RateBucket(Base):
    """A token bucket per API key, for the embedded default (production keeps them in Redis)."""

    __tablename__ = "rate_buckets"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
