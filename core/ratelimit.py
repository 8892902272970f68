"""Request rate limits per API key: a token bucket shared by every API process.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a request
takes one token or is refused with the time until one is back. Two stores, each updating the
bucket atomically so any number of API processes (and hosts) share it:

* Redis (production, when the broker is Redis): one Lua script per request, timed by the Redis
  server's clock so API hosts' clocks do not matter;
* the database (the embedded default): the ``rate_buckets`` table, one conditional UPDATE per
  request (refill, check and take in one statement), an INSERT for a new key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import case, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.models import RateBucket

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0  # when refused: until one token is back


class Buckets(Protocol):
    rate: float
    burst: int

    def take(self, key: str) -> Decision: ...


def refill(tokens: float, elapsed_s: float, *, rate: float, burst: int) -> float:
    return min(float(burst), tokens + max(0.0, elapsed_s) * rate)


def wait_for_one(tokens: float, *, rate: float) -> float:
    return max(0.0, (1.0 - tokens) / rate)


# KEYS[1] the bucket; ARGV rate, burst. Returns {allowed (0/1), tokens left (string)}.
LUA_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return {allowed, tostring(tokens)}
"""


class RedisBuckets:
    PREFIX = "ftaas:ratelimit:"

    TIMEOUT_S = 1.0

    def __init__(self, url: str, *, rate: float, burst: int) -> None:
        import redis

        self.url, self.rate, self.burst = url, rate, burst
        self.client = redis.Redis.from_url(
            url, socket_timeout=self.TIMEOUT_S, socket_connect_timeout=self.TIMEOUT_S
        )
        self.script = self.client.register_script(LUA_TAKE)
        # asyncio clients are bound to their event loop: one per loop (one in a uvicorn worker).
        self._async: dict[asyncio.AbstractEventLoop, Any] = {}

    def take(self, key: str) -> Decision:
        reply = self.script(keys=[self.PREFIX + key], args=[self.rate, self.burst])
        return self._decision(reply)

    async def atake(self, key: str) -> Decision:
        """``take`` for an event loop: waits for Redis without blocking the loop."""
        loop = asyncio.get_running_loop()
        script = self._async.get(loop)
        if script is None:
            import redis.asyncio

            if len(self._async) >= 8:  # loops that are gone (test clients); keep it bounded
                self._async.clear()
            client = redis.asyncio.Redis.from_url(
                self.url, socket_timeout=self.TIMEOUT_S, socket_connect_timeout=self.TIMEOUT_S
            )
            script = self._async[loop] = client.register_script(LUA_TAKE)
        reply = await script(keys=[self.PREFIX + key], args=[self.rate, self.burst])
        return self._decision(reply)

    def _decision(self, reply: Any) -> Decision:
        allowed, tokens = reply
        if int(allowed) == 1:
            return Decision(True)
        return Decision(False, wait_for_one(float(tokens), rate=self.rate))


class DatabaseBuckets:
    def __init__(self, factory: sessionmaker[Session], *, rate: float, burst: int) -> None:
        self.factory, self.rate, self.burst = factory, rate, burst

    def take(self, key: str, *, at: float | None = None) -> Decision:
        ts = time.time() if at is None else at
        with self.factory() as session:
            if self._take_existing(session, key, ts):
                session.commit()
                return Decision(True)
            try:
                session.execute(
                    insert(RateBucket).values(key=key, tokens=self.burst - 1.0, updated_at=ts)
                )
                session.commit()
                return Decision(True)
            except IntegrityError:  # the bucket exists, and is empty (or a racing insert)
                session.rollback()
            if self._take_existing(session, key, ts):
                session.commit()
                return Decision(True)
            row = session.execute(
                select(RateBucket.tokens, RateBucket.updated_at).where(RateBucket.key == key)
            ).one()
            session.rollback()
        tokens = refill(row.tokens, ts - row.updated_at, rate=self.rate, burst=self.burst)
        return Decision(False, wait_for_one(tokens, rate=self.rate))

    def _take_existing(self, session: Session, key: str, ts: float) -> bool:
        refilled = RateBucket.tokens + (literal(ts) - RateBucket.updated_at) * self.rate
        capped = case((refilled > self.burst, float(self.burst)), else_=refilled)
        result: Any = session.execute(
            update(RateBucket)
            .where(RateBucket.key == key, capped >= 1.0)
            .values(tokens=capped - 1.0, updated_at=ts)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount) == 1


def uses_redis(settings: Settings) -> bool:
    if settings.rate_limit_backend != "auto":
        return settings.rate_limit_backend == "redis"
    return settings.resolved_broker_url.startswith(("redis://", "rediss://"))


def make_buckets(settings: Settings, factory: sessionmaker[Session]) -> Buckets | None:
    """The store the settings name; ``None`` when rate limiting is off (rate 0)."""
    if settings.rate_limit_rps <= 0:
        return None
    rate, burst = settings.rate_limit_rps, settings.rate_limit_burst
    if uses_redis(settings):
        return RedisBuckets(settings.resolved_broker_url, rate=rate, burst=burst)
    return DatabaseBuckets(factory, rate=rate, burst=burst)
