"""Quotas, rate limits and usage through the API and the real openai SDK: 429 (or 400) in
OpenAI's envelope with Retry-After and a message naming the limit; the SDK waits and retries a
rate limit, and gives up at once on a quota waiting cannot lift."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai import OpenAI

from core.config import Settings
from tests.api.helpers import Keys, auth, chat_jsonl, create_job, make_app, upload


def _client(settings: Settings, **overrides: Any) -> TestClient:
    return TestClient(make_app(settings, **overrides))


def _sdk(app: FastAPI, key: str, seen: list[int], **kwargs: Any) -> OpenAI:
    http = TestClient(app)

    def record(response: httpx.Response) -> None:
        seen.append(response.status_code)

    http.event_hooks = {"request": [], "response": [record]}
    return OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, **kwargs)


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


def test_rate_limit_answers_429_and_the_sdk_retry_gets_through(
    settings: Settings, keys: Keys
) -> None:
    # Slow refill (one token per 2 s) so that a loaded machine cannot refill between requests.
    client = _client(settings, rate_limit_rps=0.5, rate_limit_burst=2)
    statuses = [client.get("/v1/models", headers=auth(keys.a)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    response = client.get("/v1/models", headers=auth(keys.a))
    error = _error(response, 429, "rate_limit_exceeded")
    assert error["type"] == "requests" and "0.5 requests per second" in error["message"]
    assert response.headers["retry-after"] in {"1", "2"}
    assert 0 < int(response.headers["retry-after-ms"]) <= 2000
    assert client.get("/v1/models", headers=auth(keys.b)).status_code == 200  # per key

    app = make_app(settings, rate_limit_rps=1.0, rate_limit_burst=1)
    seen: list[int] = []
    sdk = _sdk(app, keys.b, seen, max_retries=4)
    for _ in range(3):
        sdk.models.list()  # each 429 is retried after retry-after-ms, and then succeeds
    assert seen.count(429) >= 1 and seen.count(200) == 3


def test_queued_jobs_quota(settings: Settings, keys: Keys) -> None:
    app = make_app(settings, max_queued_jobs_per_tenant=2)
    client = TestClient(app)
    file_id = upload(client, keys.a, chat_jsonl(12)).json()["id"]
    for suffix in ("one", "two"):
        assert create_job(client, keys.a, file_id, suffix=suffix).status_code == 200
    response = create_job(client, keys.a, file_id, suffix="three")
    error = _error(response, 429, "max_queued_jobs")
    assert "2 queued jobs" in error["message"] and "(max_queued_jobs) is 2" in error["message"]
    assert response.headers["retry-after"] == "30" and "x-should-retry" not in response.headers

    seen: list[int] = []
    with pytest.raises(openai.RateLimitError) as raised:
        _sdk(app, keys.a, seen, max_retries=0).fine_tuning.jobs.create(
            model="smollm2-135m-instruct", training_file=file_id, suffix="four"
        )
    assert raised.value.code == "max_queued_jobs" and seen == [429]


def test_job_too_large_is_400_naming_the_limit(settings: Settings, keys: Keys) -> None:
    client = _client(settings, max_job_tokens=100)
    file_id = upload(client, keys.a, chat_jsonl(12)).json()["id"]
    error = _error(create_job(client, keys.a, file_id), 400, "max_job_tokens")
    assert error["param"] == "training_file" and "100 tokens per job" in error["message"]


def test_monthly_tokens_quota_is_not_retried_by_the_sdk(settings: Settings, keys: Keys) -> None:
    app = make_app(settings, max_trained_tokens_per_month=1_000)
    client = TestClient(app)
    file_id = upload(client, keys.a, chat_jsonl(12)).json()["id"]
    seen: list[int] = []
    sdk = _sdk(app, keys.a, seen, max_retries=3)
    with pytest.raises(openai.RateLimitError) as raised:
        sdk.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=file_id)
    assert raised.value.code == "max_trained_tokens_per_month"
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert int(raised.value.response.headers["retry-after"]) > 0
    assert seen == [429]  # x-should-retry: false, so no retry in vain


def test_files_and_bytes_quotas(settings: Settings, keys: Keys) -> None:
    client = _client(settings, max_files_per_tenant=1)
    assert upload(client, keys.a, chat_jsonl(12)).status_code == 200
    error = _error(upload(client, keys.a, chat_jsonl(12)), 429, "max_files")
    assert "limit (max_files) is 1" in error["message"]

    size = len(chat_jsonl(12))
    client = _client(settings, max_stored_bytes_per_tenant=size * 2 - 1)
    assert upload(client, keys.b, chat_jsonl(12)).status_code == 200
    response = upload(client, keys.b, chat_jsonl(12))
    error = _error(response, 429, "max_stored_bytes")
    assert response.headers["x-should-retry"] == "false"
    stored = list((settings.resolved_artifacts_dir / "files").iterdir())
    assert len(stored) == 2  # beta's refused upload left no bytes behind (one each for a, b)


def test_tenant_policy_overrides_and_usage(settings: Settings, keys: Keys) -> None:
    client = _client(settings)
    patch = client.patch(
        "/admin/tenants/alpha",
        headers=auth(keys.admin),
        json={"policy": {"max_queued_jobs": 1, "priority": 2}},
    )
    assert patch.status_code == 200 and patch.json()["policy"]["max_queued_jobs"] == 1
    bad = client.patch(
        "/admin/tenants/alpha", headers=auth(keys.admin), json={"policy": {"max_files": -1}}
    )
    assert _error(bad, 400, "invalid_policy")["param"] == "policy.max_files"

    file_id = upload(client, keys.a, chat_jsonl(12)).json()["id"]
    assert create_job(client, keys.a, file_id).status_code == 200
    _error(create_job(client, keys.a, file_id, suffix="x"), 429, "max_queued_jobs")

    usage = client.get("/v1/usage", headers=auth(keys.a)).json()
    assert usage["object"] == "organization.usage" and usage["organization"] == "alpha"
    assert usage["queued_jobs"] == {"used": 1, "limit": 1}
    assert usage["running_jobs"]["used"] == 0 and usage["priority"] == 2
    assert usage["files"]["used"] == 1 and usage["stored_bytes"]["used"] == len(chat_jsonl(12))
    assert usage["trained_tokens_this_month"]["used"] > 0  # the queued job's estimate
    assert usage["rate_limit"] == {"requests_per_second": 20.0, "burst": 100}
    provider = client.get("/admin/tenants/alpha/usage", headers=auth(keys.admin))
    assert provider.status_code == 200 and provider.json() == usage
    assert client.get("/v1/usage", headers=auth(keys.b)).json()["queued_jobs"]["limit"] == 20
    _error(client.get("/admin/tenants/nobody/usage", headers=auth(keys.admin)), 404, "not_found")


def test_rate_limit_lets_requests_through_while_redis_is_down(
    settings: Settings, keys: Keys
) -> None:
    client = _client(
        settings,
        broker_url="redis://127.0.0.1:1/0",  # nothing listens on port 1
        rate_limit_backend="redis",
        rate_limit_rps=0.001,
        rate_limit_burst=1,
    )
    statuses = [client.get("/v1/models", headers=auth(keys.a)).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
