"""The per-key request rate limit, as a dependency of the /v1 and /admin routers.

Over the limit: 429 in OpenAI's envelope (type ``requests``, code ``rate_limit_exceeded``) with
``Retry-After`` (whole seconds, at least 1) and ``retry-after-ms``, which the openai SDK reads to
wait before it retries. If Redis is unreachable requests are let through for a few seconds (logged):
the limit protects the service, and failing every request would be the outage it protects
against.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from api.deps import authenticated_key
from api.errors import ApiError
from core.models import ApiKey
from core.ratelimit import Buckets, Decision, RedisBuckets

log = logging.getLogger(__name__)


class RateLimited(ApiError):
    status_code = 429
    type = "requests"
    default_code = "rate_limit_exceeded"


OUTAGE_PAUSE_S = 5.0


class Limiter:
    """The app's buckets, and when the store last failed: after a Redis error the limit is
    skipped for a few seconds rather than making every request wait for a timeout."""

    def __init__(self, buckets: Buckets | None) -> None:
        self.buckets = buckets
        self.paused_until = 0.0

    async def take(self, key_id: str) -> Decision | None:
        buckets = self.buckets
        if buckets is None or time.monotonic() < self.paused_until:
            return None
        try:
            if isinstance(buckets, RedisBuckets):
                return await buckets.atake(key_id)  # asyncio client: no thread hop, no blocking
            return await run_in_threadpool(buckets.take, key_id)
        except Exception as exc:
            import redis

            if not isinstance(exc, redis.RedisError):
                raise
            self.paused_until = time.monotonic() + OUTAGE_PAUSE_S
            log.warning("rate limit store unreachable; not limiting for %g s: %s", OUTAGE_PAUSE_S, exc)  # fmt: skip
            return None


async def rate_limit(request: Request, key: Annotated[ApiKey, Depends(authenticated_key)]) -> None:
    # Any valid key is counted; whether it may use the route (suspension, admin) is the
    # route's own dependency's answer.
    limiter: Limiter = request.app.state.limiter
    decision = await limiter.take(key.id)
    if decision is None:
        return
    buckets = limiter.buckets
    assert buckets is not None
    if not decision.allowed:
        wait = decision.retry_after_s
        raise RateLimited(
            f"Rate limit reached for this API key: {buckets.rate:g} requests per second "
            f"(burst {buckets.burst}; rate_limit_rps, rate_limit_burst). "
            f"Retry in {wait:.2f} s.",
            headers={
                "retry-after": str(max(1, math.ceil(wait))),
                "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
            },
        )
