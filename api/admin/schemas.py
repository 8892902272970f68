"""Provider-only requests and objects: model registration, alignments, policies, tenants."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from api.jobs.schemas import SEED_MAX
from api.models.schemas import ModelRead
from api.pagination import ListResponse
from core.alignments import RETAIN_REQUESTS
from core.models import Job, Tenant
from core.policy import ALIGNMENT_METHODS, USER_DEFENSES

MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")


class ModelRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The name users pass as `model`, e.g. smollm2-135m-instruct.")
    path: str = Field(
        min_length=1,
        max_length=1024,
        description="A Hugging Face model directory on the server (must hold config.json).",
    )

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, v: Any) -> Any:
        if not isinstance(v, str) or not MODEL_ID_RE.match(v) or v.startswith("ft:"):
            raise PydanticCustomError(
                "invalid_model_id",
                "id must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', '-', '/', start with "
                "a letter or digit, and not start with 'ft:'",
            )
        return v


@dataclass(frozen=True)
class Range:
    """The numbers a field accepts: integers or any number, between ``low`` and ``high``."""

    integer: bool
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def check(self, code: str, name: str, value: Any) -> Any:
        """The value (an integral float becomes an int), else a 400 with ``code``. Null passes:
        it means "the server's default". Bools and numeric strings are refused."""
        if value is None:
            return value
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and self.integer and isinstance(value, float):
            ok = value.is_integer()
            value = int(value) if ok else value
        if ok:
            above = self.low < value if self.low_open else self.low <= value
            below = value < self.high if self.high_open else value <= self.high
            ok = math.isfinite(value) and above and below
        if not ok:
            raise PydanticCustomError(
                code,
                "{name} must be {kind} {range}; got {got}",
                {"name": name, "kind": self.kind, "range": self.text, "got": repr(value)[:40]},
            )
        return value

    @property
    def kind(self) -> str:
        return "an integer" if self.integer else "a number"

    @property
    def text(self) -> str:
        low = f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        high = f"less than {self.high:g}" if self.high_open else f"at most {self.high:g}"
        return f"{low} and {high}"


# Ranges of the alignment knobs (defense.config.AlignConfig checks signs; these also cap sizes).
ALIGNMENT_RANGES: dict[str, Range] = {
    "steps": Range(True, 1, 100_000),
    "batch_size": Range(True, 1, 256),
    "samples": Range(True, 1, 100_000),
    "retain_samples": Range(True, 0, RETAIN_REQUESTS),
    "perturbed_retain": Range(True, 0, 256),
    "seed": Range(True, 0, SEED_MAX),
    "grad_accum": Range(True, 1, 256),
    "warmup_steps": Range(True, 0, 100_000),
    "learning_rate": Range(False, 0, 1, low_open=True),
    "weight_decay": Range(False, 0, 10),
    "max_grad_norm": Range(False, 0, 1_000),
    "rho": Range(False, 0, 100),
    "eta": Range(False, 0, 100),
    "ema": Range(False, 0, 1, high_open=True),
    "lambda_refusal": Range(False, 0, 1_000),
    "booster_lambda": Range(False, 0, 1_000),
    "vaccine_rho": Range(False, 0, 1_000),
}


TAU_RANGE = Range(False, 0, 100, low_open=True)
MARGIN_RANGE = Range(False, 0, 1)
PRIORITY_RANGE = Range(False, 0, 100, low_open=True)
QUOTA_RANGES: dict[str, Range] = {
    name: Range(True, 0, 2**62)
    for name in (
        "max_running_jobs",
        "max_queued_jobs",
        "max_files",
        "max_stored_bytes",
        "max_trained_tokens_per_month",
        "max_job_tokens",
        "max_job_wall_clock_s",
    )
}


def _quota(name: str, what: str) -> Any:
    return Field(
        None,
        description=f"{what}; an integer, 0 (unlimited) or more; default: the server's setting.",
    )


def _described(name: str, what: str) -> Any:
    spec = ALIGNMENT_RANGES[name]
    return Field(None, description=f"{what}: {spec.kind}, {spec.text}.")


class AlignmentHyperparameters(BaseModel):
    """Stage-1 training settings. Each one left out (or null) takes the server's setting
    (alignment_steps, alignment_batch_size, alignment_learning_rate, alignment_samples,
    alignment_retain_samples; for Antibody and Booster alignment_rho, for Antibody
    alignment_lambda_refusal and alignment_perturbed_retain) or the method's default."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = _described("steps", "Optimizer steps")
    batch_size: int | None = _described("batch_size", "Examples per micro-batch")
    samples: int | None = _described("samples", "AdvBench alignment prompts used")
    retain_samples: int | None = _described(
        "retain_samples", "Benign retain requests (with the base model's answers) in the safe set"
    )
    perturbed_retain: int | None = _described(
        "perturbed_retain",
        "Antibody: retain examples added to the refusal pass at the perturbed point per step",
    )
    seed: int | None = _described("seed", "Random seed; 0 if absent")
    grad_accum: int | None = _described("grad_accum", "Micro-batches per optimizer step")
    warmup_steps: int | None = _described("warmup_steps", "Learning-rate warm-up steps")
    learning_rate: float | None = _described("learning_rate", "Peak learning rate")
    weight_decay: float | None = _described("weight_decay", "AdamW weight decay")
    max_grad_norm: float | None = _described("max_grad_norm", "Gradient clipping norm (0: none)")
    rho: float | None = _described("rho", "Radius of the simulated harmful step")
    eta: float | None = _described("eta", "Antibody: threshold of the adaptive lambda")
    ema: float | None = _described("ema", "Antibody: EMA momentum of lambda")
    lambda_refusal: float | None = _described(
        "lambda_refusal", "Antibody: weight of the refusal loss"
    )
    booster_lambda: float | None = _described("booster_lambda", "Booster: its lambda")
    vaccine_rho: float | None = _described("vaccine_rho", "Vaccine: perturbation radius")
    lambda_form: Literal["cosine", "projection"] | None = Field(
        None, description="Antibody: form of the adaptive lambda."
    )
    lr_schedule: Literal["constant", "linear", "cosine"] | None = Field(
        None, description="Learning-rate schedule."
    )

    @field_validator(*ALIGNMENT_RANGES, mode="before")
    @classmethod
    def _in_range(cls, v: Any, info: ValidationInfo) -> Any:
        name = str(info.field_name)
        return ALIGNMENT_RANGES[name].check("invalid_hyperparameter", name, v)

    @field_validator("lambda_form", "lr_schedule", mode="before")
    @classmethod
    def _choice(cls, v: Any, info: ValidationInfo) -> Any:
        allowed = {
            "lambda_form": ("cosine", "projection"),
            "lr_schedule": ("constant", "linear", "cosine"),
        }
        choices = allowed[str(info.field_name)]
        if v is not None and v not in choices:
            raise PydanticCustomError(
                "invalid_hyperparameter",
                "{name} must be one of {allowed}; got {got}",
                {"name": info.field_name, "allowed": ", ".join(choices), "got": repr(v)[:40]},
            )
        return v


class AlignmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = Field(
        min_length=1, max_length=128, description="A base model id from GET /admin/models."
    )
    method: Literal["antibody", "booster", "vaccine", "sft"] = Field(
        description="Stage-1 method: antibody (the default defense), booster, vaccine, or sft "
        "(plain safety fine-tuning)."
    )
    hyperparameters: AlignmentHyperparameters | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, v: Any) -> Any:
        if v not in ALIGNMENT_METHODS:
            raise PydanticCustomError(
                "invalid_method",
                "method must be one of {allowed}; got {got}",
                {"allowed": ", ".join(ALIGNMENT_METHODS), "got": repr(v)[:40]},
            )
        return v


class ModelPolicy(BaseModel):
    """A model's provider policy. In a PATCH, a key left out is kept and a key set to null is
    removed (the server's setting applies again)."""

    model_config = ConfigDict(extra="forbid")

    serve: str | None = Field(
        None,
        description="The model user jobs naming this one actually train (e.g. its aligned "
        "model); default: the newest ready model aligned with the server's alignment_method.",
    )
    defense: Literal["antibody", "lisa", "sft"] | None = Field(
        None,
        description="The defense of jobs trained on this model; default: the server's defense. "
        "sft (no defense) needs allow_sft.",
    )
    allow_sft: StrictBool | None = Field(None, description="Whether defense sft is permitted.")
    tau: float | None = Field(
        None, description="Antibody's softmax temperature, greater than 0 and at most 100."
    )

    @field_validator("serve", mode="before")
    @classmethod
    def _serve(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, str) or not MODEL_ID_RE.match(v)):
            raise PydanticCustomError("invalid_policy", "serve must be a model id")
        return v

    @field_validator("defense", mode="before")
    @classmethod
    def _defense(cls, v: Any) -> Any:
        if v is not None and v not in USER_DEFENSES:
            raise PydanticCustomError(
                "invalid_policy",
                "defense must be one of {allowed}; got {got}",
                {"allowed": ", ".join(USER_DEFENSES), "got": repr(v)[:40]},
            )
        return v

    @field_validator("allow_sft", mode="before")
    @classmethod
    def _allow_sft(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, bool):
            raise PydanticCustomError("invalid_policy", "allow_sft must be true or false")
        return v

    @field_validator("tau", mode="before")
    @classmethod
    def _tau(cls, v: Any) -> Any:
        return TAU_RANGE.check("invalid_policy", "tau", v)


class ModelPolicyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: ModelPolicy


class TenantPolicy(BaseModel):
    """A tenant's release policy, quotas and scheduling priority; same PATCH rules as a
    model's."""

    model_config = ConfigDict(extra="forbid")

    safety_gate_margin: float | None = Field(
        None,
        description="How far (0 to 1) a checkpoint's harmful score may rise above its starting "
        "model's and still be deployable; default: the server's safety_gate_margin.",
    )

    safety_gate_max_harmful: float | None = Field(
        None,
        description="The highest harmful score (0 to 1) a deployable checkpoint may have; "
        "default: the server's safety_gate_max_harmful.",
    )

    @field_validator("safety_gate_margin", "safety_gate_max_harmful", mode="before")
    @classmethod
    def _margin(cls, v: Any, info: ValidationInfo) -> Any:
        return MARGIN_RANGE.check("invalid_policy", str(info.field_name), v)

    # Quotas (core/quotas.py): each overrides the server's setting of the same meaning; 0 is
    # unlimited, null removes the override.
    max_running_jobs: int | None = _quota("max_running_jobs", "Jobs running at once")
    max_queued_jobs: int | None = _quota("max_queued_jobs", "Queued jobs")
    max_files: int | None = _quota("max_files", "Stored files")
    max_stored_bytes: int | None = _quota("max_stored_bytes", "Bytes of stored files")
    max_trained_tokens_per_month: int | None = _quota(
        "max_trained_tokens_per_month", "Trained tokens per calendar month (UTC)"
    )
    max_job_tokens: int | None = _quota("max_job_tokens", "Estimated trained tokens of one job")
    max_job_wall_clock_s: int | None = _quota(
        "max_job_wall_clock_s", "Running seconds of one job before it stops at a checkpoint"
    )
    priority: float | None = Field(
        None,
        description="Fair-scheduling weight: a tenant with priority 2 gets twice the running "
        "jobs of a tenant with 1 when both have jobs queued; greater than 0, at most 100 "
        "(default 1).",
    )

    @field_validator(*QUOTA_RANGES, mode="before")
    @classmethod
    def _quotas(cls, v: Any, info: ValidationInfo) -> Any:
        return QUOTA_RANGES[str(info.field_name)].check("invalid_policy", str(info.field_name), v)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: Any) -> Any:
        return PRIORITY_RANGE.check("invalid_policy", "priority", v)


class TenantPolicyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: TenantPolicy


class TenantRead(BaseModel):
    id: str
    object: Literal["organization"] = "organization"
    name: str
    created_at: int
    policy: dict[str, Any] = Field(description="Overrides of the server's release settings.")
    suspended_at: int | None = Field(
        None, description="When the tenant was suspended (its keys get 403 on /v1); null if active."
    )

    @classmethod
    def from_row(cls, row: Tenant) -> TenantRead:
        return cls(
            id=row.id,
            name=row.name,
            created_at=row.created_at,
            policy=row.policy or {},
            suspended_at=row.suspended_at,
        )


class TenantList(ListResponse[TenantRead]):
    pass


class AdminModelRead(ModelRead):
    source: str = Field(description="builtin, local or aligned.")
    path: str | None = Field(description="The model directory on the server.")
    adapter_path: str | None = Field(description="For an aligned model: its LoRA adapter.")
    alignment_job_id: str | None = Field(description="For an aligned model: the job that made it.")
    policy: dict[str, Any] = Field(description="Provider policy for jobs naming this model.")
    alignment: dict[str, Any] | None = Field(
        None,
        description="For a pending aligned model: its alignment job's progress (job_id, "
        "job_status, step, total_steps, percent, estimated_finish, eta_s, eta).",
    )


class AdminModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdminModelRead]


class FlaggedLine(BaseModel):
    model_config = ConfigDict(extra="allow")

    line: int = Field(description="1-based line number in the job's training file.")
    weight: float | None = Field(None, description="The line's mean Antibody weight.")
    relative_weight: float | None = Field(
        None, description="Its weight relative to the mean of its batches (1.0 = average)."
    )


class FlaggedLineList(BaseModel):
    object: Literal["list"] = "list"
    job_id: str
    computed: bool = Field(
        description="Whether the job has recorded its flagged lines yet (after training)."
    )
    data: list[FlaggedLine] = Field(description="The most down-weighted lines, lowest first.")

    @classmethod
    def from_job(cls, job: Job) -> FlaggedLineList:
        return cls(
            job_id=job.id,
            computed=job.flagged_lines is not None,
            data=[FlaggedLine.model_validate(x) for x in job.flagged_lines or []],
        )
