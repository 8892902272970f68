"""A database outage answers 503 ``service_unavailable`` with ``Retry-After``, never a 500.

The test starts its own PostgreSQL cluster on a spare port (the shared one is never stopped),
serves the real app from it, stops the cluster mid-run and starts it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn

from api.main import create_app
from bench.services import PostgresCluster, free_port
from core import migrate
from core.accounts import create_key
from core.config import Settings
from core.db import engine_for, session_factory, session_scope


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    pg = PostgresCluster().init()
    pg.start()
    migrate.upgrade(pg.url)
    yield pg
    engine_for.cache_clear()
    pg.destroy()


@pytest.fixture
def served(cluster: PostgresCluster, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(base URL, a tenant key) of the real app on the test's own cluster."""
    settings = Settings(
        home=tmp_path,
        database_url=cluster.url,
        broker_url="redis://127.0.0.1:1/0",  # never reached: nothing is enqueued here
        key_secret="test-secret",
        _env_file=None,
    )
    with session_scope(session_factory(cluster.url)) as session:
        key = create_key(session, tenant_name="acme", admin=False, secret=b"test-secret")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", key
    server.should_exit = True
    thread.join(timeout=10)


def test_outage_is_a_503_with_retry_after(
    cluster: PostgresCluster, served: tuple[str, str]
) -> None:
    base, key = served
    auth = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{base}/v1/fine_tuning/jobs", headers=auth).status_code == 200
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok", "database": "ok"}

    cluster.stop()
    try:
        for path, headers in (
            ("/v1/fine_tuning/jobs", auth),
            ("/v1/files", auth),
            ("/healthz", {}),
        ):
            response = httpx.get(f"{base}{path}", headers=headers, timeout=30)
            assert response.status_code == 503, (path, response.text)
            assert int(response.headers["retry-after"]) > 0
            error = response.json()["error"]
            assert error["type"] == "server_error"
            assert error["code"] == "service_unavailable"
            assert "database" in error["message"]
            assert "postgres" not in error["message"].lower()  # no server detail leaks
    finally:
        cluster.start()

    # Back up: the pool's stale connections are replaced (pre-ping), no restart of the API.
    assert httpx.get(f"{base}/v1/fine_tuning/jobs", headers=auth).status_code == 200
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_sdk_polling_rides_out_a_restart(cluster: PostgresCluster, served: tuple[str, str]) -> None:
    """The official SDK retries the 503s (honouring Retry-After) while the database restarts."""
    base, key = served
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=6)
    restart = threading.Thread(target=cluster.restart, kwargs={"down_s": 3.0})
    restart.start()
    try:
        deadline = time.monotonic() + 8
        polls = 0
        while time.monotonic() < deadline:
            assert client.fine_tuning.jobs.list().data == []
            polls += 1
            time.sleep(0.2)
    finally:
        restart.join()
    assert polls > 0
