"""Token buckets on the real stores: SQLite and PostgreSQL (``rate_buckets``) and Redis (a Lua
script). Concurrent takers never get more than the burst, refill follows the rate, and keys
are independent."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.ratelimit import Buckets, DatabaseBuckets, RedisBuckets, make_buckets, uses_redis


def _stores(settings: Settings, factory: sessionmaker[Session], *, rate: float, burst: int) -> list[Buckets]:  # fmt: skip
    stores: list[Buckets] = [DatabaseBuckets(factory, rate=rate, burst=burst)]
    if settings.resolved_broker_url.startswith("redis"):
        stores.append(RedisBuckets(settings.resolved_broker_url, rate=rate, burst=burst))
    return stores


def test_concurrent_takers_get_exactly_the_burst(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    for buckets in _stores(settings, session_factory, rate=0.001, burst=10):
        key = f"burst-{type(buckets).__name__}"
        with ThreadPoolExecutor(8) as pool:
            decisions = list(pool.map(buckets.take, [key] * 30))
        assert sum(d.allowed for d in decisions) == 10, type(buckets).__name__
        refused = [d for d in decisions if not d.allowed]
        assert all(d.retry_after_s > 100 for d in refused)  # ~1000 s for a token at 0.001/s
        assert buckets.take("another-key").allowed


def test_bucket_refills_at_the_rate(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    for buckets in _stores(settings, session_factory, rate=2.0, burst=2):
        key = f"refill-{type(buckets).__name__}"
        assert [buckets.take(key).allowed for _ in range(3)] == [True, True, False]
        time.sleep(1.1)  # 2.2 tokens' worth, capped at the burst of 2
        assert [buckets.take(key).allowed for _ in range(3)] == [True, True, False]


@pytest.mark.parametrize(("broker", "expected"), [("redis://h:6379/0", True), (None, False)])
def test_backend_follows_the_broker(broker: str | None, expected: bool) -> None:
    settings = Settings(broker_url=broker, _env_file=None)  # type: ignore[call-arg]
    assert uses_redis(settings) is expected
    assert make_buckets(settings.model_copy(update={"rate_limit_rps": 0}), None) is None  # type: ignore[arg-type]


def test_redis_asyncio_takers_get_exactly_the_burst(settings: Settings) -> None:
    if not settings.resolved_broker_url.startswith("redis"):
        pytest.skip("the production layout's Redis")
    import asyncio

    buckets = RedisBuckets(settings.resolved_broker_url, rate=0.001, burst=10)

    async def takers() -> list[bool]:
        decisions = await asyncio.gather(*(buckets.atake("async-key") for _ in range(30)))
        return [d.allowed for d in decisions]

    assert sum(asyncio.run(takers())) == 10
    assert sum(asyncio.run(takers())) == 0  # a second event loop gets its own client
