"""The application factory: ``create_app(settings)`` wires settings, database, storage, queue,
error handling and the routers. Nothing here runs at import time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI

from api.admin.console import router as console_router
from api.admin.endpoints import router as admin_router
from api.authcache import KeyCache
from api.dashboard.router import install as install_dashboard
from api.errors import install_error_handlers
from api.files.endpoints import router as files_router
from api.health import router as health_router
from api.jobs.endpoints import router as jobs_router
from api.json_guard import JsonGuard
from api.limits import BodySizeLimit
from api.metrics import RequestMetrics, build_registry
from api.metrics import router as metrics_router
from api.models.endpoints import router as models_router
from api.openapi_doc import build_openapi
from api.queue import QueueClient
from api.quotas import install_quota_handler
from api.ratelimit import Limiter, rate_limit
from api.usage import router as usage_router
from core.config import Settings, get_settings
from core.db import session_factory
from core.private import private_dir, restrict_umask
from core.ratelimit import make_buckets
from core.storage import ArtifactStore

DESCRIPTION = """\
A self-hostable fine-tuning service with OpenAI's `/v1/files`, `/v1/fine_tuning/jobs` and
`/v1/models` routes: the official `openai` SDK works against it unmodified. Authenticate with
`Authorization: Bearer <key>`. Every error has the shape
`{"error": {"message", "type", "param", "code"}}`; state conflicts are 409 with
`x-should-retry: false`. Extension fields (`defense`, `attempt`, file `errors`, …) are additions,
never changes, to OpenAI's objects."""


TOO_MANY = {
    "description": "Over the key's rate limit or a quota (`Retry-After` says when to retry).",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


def _cached(fn: Callable[[], bytes]) -> Callable[[], bytes]:
    lock = threading.Lock()
    value: list[bytes] = []

    def get() -> bytes:
        if not value:
            with lock:
                if not value:
                    value.append(fn())
        return value[0]

    return get


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The document is built once (``api.openapi_doc``: every implied error status added)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    return build


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    restrict_umask()  # uploads and everything else under FTAAS_HOME owner-only (core/private.py)
    private_dir(settings.resolved_home)
    app = FastAPI(title="ftaas", version="0.1.0", description=DESCRIPTION)
    app.state.settings = settings
    app.state.session_factory = session_factory(settings.resolved_database_url)
    app.state.store = ArtifactStore(settings.resolved_artifacts_dir)
    app.state.queue = QueueClient(settings)
    app.state.key_secret = _cached(settings.resolved_key_secret)

    install_error_handlers(app)
    install_quota_handler(app)
    # Added first, so it runs inside the size cap: it reads bodies already capped.
    app.add_middleware(JsonGuard, max_depth=settings.max_json_depth)
    app.add_middleware(BodySizeLimit, max_upload_bytes=settings.max_upload_bytes)

    app.state.limiter = Limiter(make_buckets(settings, app.state.session_factory))
    app.state.key_cache = KeyCache(ttl_s=settings.auth_cache_ttl_s)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(rate_limit)])
    v1.include_router(files_router)
    v1.include_router(jobs_router)
    v1.include_router(models_router)
    v1.include_router(usage_router)
    app.include_router(v1)
    app.include_router(admin_router, dependencies=[Depends(rate_limit)])
    app.include_router(console_router, dependencies=[Depends(rate_limit)])
    app.include_router(health_router)
    if settings.metrics_enabled:
        registry, histogram = build_registry(app.state.session_factory)
        app.state.metrics_registry = registry
        app.add_middleware(RequestMetrics, histogram=histogram)
        app.include_router(metrics_router)
    install_dashboard(app)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app
