"""The per-key request rate limit, as a dependency of the /v1 and /admin routers.

Over the limit: 429 in OpenAI's envelope (type ``requests``, code ``rate_limit_exceeded``) with
``Retry-After`` (whole seconds, at least 1) and ``retry-after-ms``, which the openai SDK reads to
wait before it retries. If Redis is unreachable the request is let through (logged): the limit
protects the service, and failing every request would be the outage it protects against.
"""

from __future__ import annotations

import logging
import math

from fastapi import Request

from api.deps import CurrentKey
from api.errors import ApiError
from core.ratelimit import Buckets

log = logging.getLogger(__name__)


class RateLimited(ApiError):
    status_code = 429
    type = "requests"
    default_code = "rate_limit_exceeded"


def rate_limit(request: Request, key: CurrentKey) -> None:
    buckets: Buckets | None = request.app.state.rate_buckets
    if buckets is None:
        return
    try:
        decision = buckets.take(key.id)
    except Exception as exc:
        import redis

        if not isinstance(exc, redis.RedisError):
            raise
        log.warning("rate limit store unreachable; letting the request through: %s", exc)
        return
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
