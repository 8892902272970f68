"""A short-lived, per-process cache of API key -> key row, for the polling hot path.

Authenticating is a database query per request; a client polling its job many times a second
would spend most of its requests on it. Entries live ``ttl_s`` seconds (FTAAS_AUTH_CACHE_TTL_S,
2 s by default), so a revoked key keeps working for at most that long in each API process. The
cache is keyed by the key's HMAC (never the key itself) and holds a detached copy of the row.
"""

from __future__ import annotations

import threading
import time
import weakref

from core.models import ApiKey, Tenant

MAX_ENTRIES = 10_000

# Every cache of this process, so a suspension or revocation made here is seen here at once
# (other API processes see it within their TTL).
_caches: weakref.WeakSet[KeyCache] = weakref.WeakSet()


def forget_all() -> None:
    """Empty every key cache of this process (after a tenant is suspended or a key revoked)."""
    for cache in list(_caches):
        cache.clear()


def snapshot(row: ApiKey) -> ApiKey:
    """A transient copy, safe to share between requests and sessions."""
    return ApiKey(
        seq=row.seq,
        id=row.id,
        tenant_id=row.tenant_id,
        key_hash=row.key_hash,
        prefix=row.prefix,
        is_admin=row.is_admin,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        # The tenant's name, policy and suspension go with it: suspension (like revocation)
        # takes effect within one TTL.
        tenant=Tenant(
            seq=row.tenant.seq,
            id=row.tenant.id,
            name=row.tenant.name,
            policy=dict(row.tenant.policy or {}),
            created_at=row.tenant.created_at,
            suspended_at=row.tenant.suspended_at,
        ),
    )


class KeyCache:
    def __init__(self, *, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, ApiKey]] = {}
        self._lock = threading.Lock()
        _caches.add(self)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, key_hash: str) -> ApiKey | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key_hash: str, row: ApiKey) -> ApiKey:
        copy = snapshot(row)
        if self.ttl_s > 0:
            with self._lock:
                if len(self._entries) >= MAX_ENTRIES:
                    self._entries.clear()  # crude but bounded; refilled within one TTL
                self._entries[key_hash] = (time.monotonic() + self.ttl_s, copy)
        return copy
