"""GET /metrics: the series an on-call engineer reads, with their labels, from real rows."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from core.config import Settings
from core.db import session_factory, session_scope
from core.jobs import add_event
from core.models import Job, now
from tests.api.helpers import Keys, auth


def _samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def _get(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_series_and_labels(
    client: TestClient, keys: Keys, job_id: str, settings: Settings
) -> None:
    # Shape the rows: one job queued 100 s ago, one finished in 90 s with a failed safety gate.
    factory = session_factory(settings.resolved_database_url)
    at = now()
    with session_scope(factory) as session:
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=at - 100))
        job = session.query(Job).filter_by(id=job_id).one()
        done = Job(
            tenant_id=job.tenant_id,
            model=job.model,
            training_file=job.training_file,
            status="succeeded",
            seed=1,
            started_at=at - 90,
            finished_at=at,
        )
        session.add(done)
        session.flush()
        add_event(session, done, "Safety at step 2: harmful 0.9 (NOT deployable).", type="metrics")
        add_event(session, done, "Step 2/4", type="metrics", data={"tokens_per_second": 12.5})

    assert client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=auth(keys.a)).status_code == 200
    assert client.get("/v1/fine_tuning/jobs/ftjob-nope", headers=auth(keys.a)).status_code == 404
    samples = _samples(client)

    assert _get(samples, "ftaas_database_up") == 1
    assert _get(samples, "ftaas_jobs", status="queued", kind="fine_tune") == 1
    assert _get(samples, "ftaas_jobs", status="succeeded", kind="fine_tune") == 1
    assert _get(samples, "ftaas_queue_depth", queue="training") == 1
    assert _get(samples, "ftaas_queue_depth", queue="alignment") == 0
    assert _get(samples, "ftaas_queue_depth", queue="screening") == 1  # the upload, queued
    assert 100 <= _get(samples, "ftaas_queue_oldest_age_seconds", queue="training") < 200
    assert _get(samples, "ftaas_queue_oldest_age_seconds", queue="alignment") == 0
    done_labels = {"kind": "fine_tune", "status": "succeeded"}
    assert _get(samples, "ftaas_job_duration_seconds_count", **done_labels) == 1
    assert _get(samples, "ftaas_job_duration_seconds_sum", **done_labels) == 90
    assert _get(samples, "ftaas_job_duration_seconds_bucket", le="60.0", **done_labels) == 0
    assert _get(samples, "ftaas_job_duration_seconds_bucket", le="120.0", **done_labels) == 1
    assert _get(samples, "ftaas_safety_gate_failures_total") == 1
    assert _get(samples, "ftaas_running_tokens_per_second", kind="fine_tune") == 0  # not running

    # Latency is labelled by the route template, never by the raw path (ids stay out).
    route = "/v1/fine_tuning/jobs/{fine_tuning_job_id}"
    latency = "ftaas_http_request_duration_seconds_count"
    assert _get(samples, latency, method="GET", route=route, status="2xx") == 1
    assert _get(samples, latency, method="GET", route=route, status="4xx") == 1
    assert not any(job_id in str(labels) for _, labels in samples)


def test_running_jobs_report_tokens_per_second(
    client: TestClient, job_id: str, settings: Settings
) -> None:
    with session_scope(session_factory(settings.resolved_database_url)) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="running"))
        job = session.query(Job).filter_by(id=job_id).one()
        add_event(session, job, "Step 1/4", type="metrics", data={"tokens_per_second": 3.0})
        add_event(session, job, "Step 2/4", type="metrics", data={"tokens_per_second": 7.5})
    samples = _samples(client)
    assert _get(samples, "ftaas_running_tokens_per_second", kind="fine_tune") == 7.5
    assert _get(samples, "ftaas_jobs", status="running", kind="fine_tune") == 1
