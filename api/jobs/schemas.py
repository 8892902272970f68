"""Fine-tuning job, event and checkpoint objects, and the create request.

Bad values raise ``PydanticCustomError`` with an ``invalid_*`` type: the error handler uses that
type as the error ``code`` and the message as written, with ``param`` the dotted path of the
field (``method.supervised.hyperparameters.n_epochs``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from api.pagination import ListResponse
from core.models import Checkpoint, Job, JobEvent

AUTO: Literal["auto"] = "auto"
SUFFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
METADATA_MAX_PAIRS = 16
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 512
SEED_MAX = 2**31 - 1

JobStatusName = Literal[
    "validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"
]


def _auto_or_number(
    name: str, value: Any, *, integer: bool, low: float, high: float, low_open: bool = False
) -> Any:
    if value is None or value == AUTO:
        return AUTO
    kind = "an integer" if integer else "a number"
    bound = (
        f"greater than {low:g} and at most {high:g}" if low_open else f"from {low:g} to {high:g}"
    )
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and integer and isinstance(value, float):
        ok = value.is_integer()
        value = int(value) if ok else value
    if ok:
        ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        raise PydanticCustomError(
            "invalid_hyperparameter",
            "{name} must be 'auto' or {kind} {bound}; got {got}",
            {"name": name, "kind": kind, "bound": bound, "got": repr(value)[:40]},
        )
    return value


class Hyperparameters(BaseModel):
    """Each value is a number or ``"auto"`` (the service picks; the job shows what it picked)."""

    model_config = ConfigDict(extra="forbid")

    batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=256)] = AUTO
    learning_rate_multiplier: Literal["auto"] | Annotated[float, Field(gt=0, le=10)] = AUTO
    n_epochs: Literal["auto"] | Annotated[int, Field(ge=1, le=50)] = AUTO

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        return _auto_or_number("batch_size", v, integer=True, low=1, high=256)

    @field_validator("learning_rate_multiplier", mode="before")
    @classmethod
    def _lr(cls, v: Any) -> Any:
        return _auto_or_number(
            "learning_rate_multiplier", v, integer=False, low=0, high=10, low_open=True
        )

    @field_validator("n_epochs", mode="before")
    @classmethod
    def _n_epochs(cls, v: Any) -> Any:
        return _auto_or_number("n_epochs", v, integer=True, low=1, high=50)


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised"] = Field(description="Only supervised fine-tuning is offered.")
    supervised: SupervisedMethod | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _supervised_only(cls, v: Any) -> Any:
        if v != "supervised":
            raise PydanticCustomError(
                "invalid_method",
                "method.type {got} is not supported: this service runs 'supervised' jobs only",
                {"got": repr(v)[:40]},
            )
        return v


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128, description="A base model from /v1/models.")
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    method: Method | None = None
    hyperparameters: Hyperparameters | None = Field(
        None, description="Deprecated: use method.supervised.hyperparameters."
    )
    # The validators below give the codes and messages; json_schema_extra documents the same
    # limits, so that the schema accepts only what the API accepts.
    suffix: str | None = Field(
        None,
        description="Up to 64 characters of [A-Za-z0-9_-].",
        json_schema_extra={"pattern": SUFFIX_RE.pattern},
    )
    seed: int | None = Field(
        None,
        description=f"0 to {SEED_MAX}; generated if absent.",
        json_schema_extra={"minimum": 0, "maximum": SEED_MAX},
    )
    metadata: dict[str, str] | None = Field(
        None,
        description="Up to 16 pairs; keys up to 64 characters, values up to 512.",
        json_schema_extra={
            "maxProperties": METADATA_MAX_PAIRS,
            "propertyNames": {"maxLength": METADATA_KEY_MAX},
            "additionalProperties": {"type": "string", "maxLength": METADATA_VALUE_MAX},
        },
    )
    integrations: list[dict[str, Any]] | None = Field(
        None,
        description="Not supported: must be absent or empty.",
        json_schema_extra={"maxItems": 0},
    )

    @field_validator("suffix", mode="before")
    @classmethod
    def _suffix(cls, v: Any) -> Any:
        if v is not None and not (isinstance(v, str) and SUFFIX_RE.match(v)):
            raise PydanticCustomError(
                "invalid_suffix", "suffix must be 1 to 64 characters of A-Z, a-z, 0-9, - and _"
            )
        return v

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, v: Any) -> Any:
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= SEED_MAX
        ):
            raise PydanticCustomError(
                "invalid_seed", "seed must be an integer from 0 to {max}", {"max": SEED_MAX}
            )
        return v

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, v: Any) -> Any:
        if v is None:
            return v
        problem = None
        if not isinstance(v, dict):
            problem = "metadata must be an object of string keys and string values"
        elif len(v) > METADATA_MAX_PAIRS:
            problem = f"metadata has {len(v)} pairs; at most {METADATA_MAX_PAIRS} are allowed"
        else:
            for key, value in v.items():
                if not isinstance(value, str):
                    problem = f"metadata value for {key!r} must be a string"
                elif "\x00" in key or "\x00" in value:
                    problem = "metadata keys and values must not contain NUL characters"
                elif len(key) > METADATA_KEY_MAX:
                    problem = (
                        f"metadata key {key[:20]!r}… is longer than {METADATA_KEY_MAX} characters"
                    )
                elif len(value) > METADATA_VALUE_MAX:
                    problem = (
                        f"metadata value for {key!r} is longer than {METADATA_VALUE_MAX} characters"
                    )
                if problem:
                    break
        if problem:
            raise PydanticCustomError("invalid_metadata", problem)
        return v

    @field_validator("integrations", mode="before")
    @classmethod
    def _integrations(cls, v: Any) -> Any:
        if v:
            raise PydanticCustomError(
                "invalid_integrations",
                "integrations (e.g. wandb) are not supported by this service",
            )
        return v


class ResolvedHyperparameters(BaseModel):
    batch_size: int | Literal["auto"]
    learning_rate_multiplier: float | Literal["auto"]
    n_epochs: int | Literal["auto"]


class SupervisedRead(BaseModel):
    hyperparameters: ResolvedHyperparameters


class MethodRead(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedRead


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobRead(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    status: JobStatusName = Field(
        description="OpenAI's values plus `paused` (OpenAI has pause/resume but no such value)."
    )
    training_file: str
    validation_file: str | None
    result_files: list[str]
    trained_tokens: int | None
    hyperparameters: ResolvedHyperparameters = Field(
        description="The values the job runs with; 'auto' requests are shown resolved."
    )
    method: MethodRead
    seed: int
    estimated_finish: int | None
    integrations: list[dict[str, Any]]
    metadata: dict[str, str] | None
    error: JobError | None
    user_provided_suffix: str | None
    # Extensions.
    kind: Literal["fine_tune", "alignment"] = Field(
        description="fine_tune: a user job; alignment: the provider's stage-1 alignment of a base "
        "model (admin only)."
    )
    defense: str = Field(
        description="The training-time defense the provider applies (antibody, lisa, or sft "
        "where the model's policy allows it); for an alignment, its stage-1 method. Recorded at "
        "creation from provider policy; the worker records what actually ran."
    )
    defense_params: dict[str, Any] = Field(
        description="The defense's parameters, e.g. {'tau': 1.0} for Antibody."
    )
    served_model: str | None = Field(
        description="The model the job actually trains: the pre-aligned model serving `model` "
        "when there is one (a job waiting for a pending one stays queued)."
    )
    safety: dict[str, Any] | None = Field(
        description="Safety scores of the starting and final model and the release-gate "
        "decision; null until computed."
    )
    attempt: int = Field(description="How many times a worker has started this job.")

    @classmethod
    def from_row(cls, row: Job) -> JobRead:
        resolved = row.resolved_hyperparameters or {}
        shown = ResolvedHyperparameters(
            batch_size=resolved.get("batch_size", AUTO),
            learning_rate_multiplier=resolved.get("learning_rate_multiplier", AUTO),
            n_epochs=resolved.get("n_epochs", AUTO),
        )
        error = None
        if row.error_code or row.error_message:
            error = JobError(
                code=row.error_code or "error",
                message=row.error_message or "",
                param=row.error_param,
            )
        return cls(
            id=row.id,
            created_at=row.created_at,
            finished_at=row.finished_at,
            model=row.model,
            fine_tuned_model=row.fine_tuned_model,
            organization_id=row.tenant_id,
            status=row.status,
            training_file=row.training_file,
            validation_file=row.validation_file,
            result_files=[],
            trained_tokens=row.trained_tokens,
            hyperparameters=shown,
            method=MethodRead(supervised=SupervisedRead(hyperparameters=shown)),
            seed=row.seed,
            estimated_finish=row.estimated_finish,
            integrations=[],
            metadata=row.metadata_,
            error=error,
            user_provided_suffix=row.suffix,
            kind=row.kind,
            defense=row.defense,
            defense_params=row.defense_params or {},
            served_model=row.served_model,
            safety=row.safety,
            attempt=row.attempt,
        )


class JobList(ListResponse[JobRead]):
    pass


class EventRead(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: JobEvent) -> EventRead:
        return cls(
            id=row.id,
            created_at=row.created_at,
            level=row.level,
            message=row.message,
            type=row.type,
            data=row.data,
        )


class EventList(ListResponse[EventRead]):
    pass


class CheckpointRead(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any] = Field(
        description="step, train_loss, valid_loss, … as recorded (extra keys are extensions)."
    )
    # Extensions.
    safety: dict[str, Any] | None = Field(
        description="Safety scores of this checkpoint (harmful_score, over_refusal, …); null "
        "until evaluated."
    )
    deployable: bool | None = Field(
        description="Whether it passed the release gate (its adapter can be downloaded); null "
        "until evaluated."
    )

    @classmethod
    def from_row(cls, row: Checkpoint) -> CheckpointRead:
        metrics: dict[str, Any] = {"step": row.step_number}
        if row.train_loss is not None:
            metrics["train_loss"] = row.train_loss
        metrics.update(row.metrics or {})
        return cls(
            id=row.id,
            created_at=row.created_at,
            fine_tuned_model_checkpoint=row.fine_tuned_model_checkpoint,
            fine_tuning_job_id=row.job_id,
            step_number=row.step_number,
            metrics=metrics,
            safety=row.safety,
            deployable=row.deployable,
        )


class CheckpointList(ListResponse[CheckpointRead]):
    pass
