"""Request dependencies as ``Annotated`` aliases: the session, settings, store, queue and caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.authcache import KeyCache
from api.errors import Forbidden, Unauthorized
from api.queue import QueueClient
from core.accounts import find_key
from core.config import Settings
from core.models import ApiKey
from core.security import hash_key
from core.storage import ArtifactStore
from core.tenants import is_suspended

bearer = HTTPBearer(
    auto_error=False,
    description="An API key, sent as `Authorization: Bearer sk-ftaas-…`.",
)


# The cheap dependencies are ``async def`` so that FastAPI calls them on the event loop instead
# of hopping to the thread pool for each one (the hops dominate a status poll's cost).
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    # Creating a Session does no I/O (it connects on first use); closing it returns the
    # connection to the pool, which is I/O, so that part runs in the thread pool.
    session: Session = request.app.state.session_factory()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()  # never connected (or already closed): no I/O, no thread hop


async def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


async def get_queue(request: Request) -> QueueClient:
    queue: QueueClient = request.app.state.queue
    return queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
QueueDep = Annotated[QueueClient, Depends(get_queue)]


async def authenticated_key(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiKey:
    if credentials is None or not credentials.credentials:
        raise Unauthorized(
            "You didn't provide an API key. Send it in an Authorization header using Bearer "
            "auth (Authorization: Bearer YOUR_KEY)."
        )
    # A cache hit (api/authcache.py, a few seconds) answers on the event loop with no query.
    digest = hash_key(credentials.credentials, request.app.state.key_secret())
    cache: KeyCache = request.app.state.key_cache
    key = cache.get(digest)
    if key is None:
        row = await run_in_threadpool(_find_key_with_tenant, session, digest)
        if row is None:
            raise Unauthorized("Incorrect API key provided.")
        key = cache.put(digest, row)
    return key


async def current_key(key: Annotated[ApiKey, Depends(authenticated_key)]) -> ApiKey:
    """The caller of a /v1 route: a valid key whose tenant is not suspended."""
    if is_suspended(key):
        raise Forbidden(
            f"The organization {key.tenant.name!r} is suspended by the service provider; its "
            "API keys cannot be used until it is reinstated.",
            code="tenant_suspended",
        )
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def _find_key_with_tenant(session: Session, digest: str) -> ApiKey | None:
    row = find_key(session, digest)
    if row is not None:
        _ = row.tenant  # loaded here, in the thread, so the cached snapshot can carry it
    return row


async def admin_key(key: Annotated[ApiKey, Depends(authenticated_key)]) -> ApiKey:
    # Admin keys keep working on /admin while their tenant is suspended, so a provider who
    # suspends its own tenant is not locked out of the console.
    # Deny by default: only keys created as admin keys pass, whatever their tenant.
    if not key.is_admin:
        raise Forbidden("This route needs an admin API key.")
    return key


AdminKey = Annotated[ApiKey, Depends(admin_key)]
