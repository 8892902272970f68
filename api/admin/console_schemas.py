"""Objects of the provider-console routes: tenants' keys and suspension, workers, the audit log."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator
from pydantic_core import PydanticCustomError

from api.admin.schemas import TenantRead
from api.pagination import ListResponse
from core.models import AdminAction, ApiKey, Worker
from core.workers import Liveness

TENANT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="1 to 128 characters of A-Z, a-z, 0-9, '.', '_', '-'.")

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        if not isinstance(v, str) or not TENANT_NAME_RE.match(v):
            raise PydanticCustomError(
                "invalid_tenant_name",
                "name must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', '-', starting "
                "with a letter or digit",
            )
        return v


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    admin: StrictBool = Field(False, description="Create an admin key (all tenants, /admin).")


class KeyRead(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    organization_id: str
    tenant: str
    prefix: str = Field(description="The key's first characters, to recognise it; never the key.")
    admin: bool
    created_at: int
    revoked_at: int | None

    @classmethod
    def from_row(cls, row: ApiKey) -> KeyRead:
        return cls(
            id=row.id,
            organization_id=row.tenant_id,
            tenant=row.tenant.name,
            prefix=row.prefix,
            admin=row.is_admin,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
        )


class KeyCreated(KeyRead):
    key: str = Field(description="The key itself: shown this once, never stored.")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyRead]


class Suspend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cancel_queued_jobs: StrictBool = Field(
        False,
        description="Also cancel the tenant's jobs that have not started (queued, validating).",
    )


class SuspensionRead(TenantRead):
    changed: bool = Field(description="False when the tenant already was in that state.")
    cancelled_jobs: list[str] = Field(default_factory=list, description="Jobs cancelled with it.")


class WorkerRead(BaseModel):
    id: str = Field(description="The Celery node name, e.g. training@host.")
    object: Literal["worker"] = "worker"
    host: str
    pid: int
    queues: list[str]
    device: str | None
    memory_used: int | None = Field(description="Resident bytes of the worker and its pool.")
    memory_total: int | None = Field(description="The host's memory in bytes.")
    current_job_id: str | None
    version: str | None
    started_at: int
    last_seen_at: int
    stopped_at: int | None
    status: Liveness = Field(description="alive, stale (silent for 3 heartbeats) or stopped.")

    @classmethod
    def from_row(cls, row: Worker, status: Liveness) -> WorkerRead:
        return cls(
            id=row.id,
            host=row.host,
            pid=row.pid,
            queues=[str(q) for q in row.queues or []],
            device=row.device,
            memory_used=row.memory_used,
            memory_total=row.memory_total,
            current_job_id=row.current_job_id,
            version=row.version,
            started_at=row.started_at,
            last_seen_at=row.last_seen_at,
            stopped_at=row.stopped_at,
            status=status,
        )


class WorkerList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WorkerRead]


class Actor(BaseModel):
    key_id: str
    tenant: str
    via: str = Field(description="dashboard or api.")


class AdminActionRead(BaseModel):
    id: str
    object: Literal["admin_action"] = "admin_action"
    at: int
    actor: Actor
    action: str
    target_type: str
    target_id: str
    detail: dict[str, Any]

    @classmethod
    def from_row(cls, row: AdminAction) -> AdminActionRead:
        return cls(
            id=row.id,
            at=row.at,
            actor=Actor(key_id=row.actor_key_id, tenant=row.actor_tenant, via=row.via),
            action=row.action,
            target_type=row.target_type,
            target_id=row.target_id,
            detail=row.detail or {},
        )


class AdminActionList(ListResponse[AdminActionRead]):
    pass
