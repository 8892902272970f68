"""Prometheus metrics at ``GET /metrics``: HTTP latency by route, and the service's state read from
the database at scrape time.

Choices (docs/operations.md lists every series):
- The state gauges (jobs by status and kind, queue depth and oldest queued age, job durations,
  safety-gate failures, tokens/s of running jobs) are computed from the database on each scrape
  with a handful of aggregate queries, so every API replica reports the same truth and nothing is
  lost when a process restarts. The job-duration histogram is built by the database
  (``SUM(CASE ...)`` per bucket), never by loading rows.
- HTTP latency is labelled by the route's template (``/v1/fine_tuning/jobs/{fine_tuning_job_id}``),
  never the raw path, so ids cannot blow up the series count; unmatched paths are ``unmatched``.
- ``/metrics`` needs no key (like ``/healthz``) and carries no tenant data; expose it only on
  the internal network. Under several API processes set ``PROMETHEUS_MULTIPROC_DIR`` (prometheus
  client's multiprocess mode) and the HTTP series are summed across them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.jobs import JobStatus
from core.models import File, Job, JobEvent, now
from core.queue import ALIGNMENT_QUEUE, SCREENING_QUEUE, TRAINING_QUEUE, job_queue

log = logging.getLogger(__name__)

JOB_KINDS = ("fine_tune", "alignment")
# Job durations: seconds (tiny jobs take a minute; CPU alignments hours).
JOB_DURATION_BUCKETS = (30, 60, 120, 300, 600, 1800, 3600, 2 * 3600, 4 * 3600, 12 * 3600, 86400)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
GATE_FAILED = "%(NOT deployable)."  # the worker's safety event for a checkpoint that fails


class DatabaseCollector:
    """Gauges computed from the job, file and event tables when Prometheus scrapes."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def describe(self) -> Iterable[Metric]:
        return []  # computed at scrape time; nothing to register up front

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ftaas_database_up", "1 when the database answered this scrape.")
        try:
            with self.factory() as session:
                families = list(self._families(session))
        except Exception:  # the scrape still answers (with database_up 0) during an outage
            log.warning("metrics: database unreachable", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, session: Session) -> Iterator[Metric]:
        at = now()
        jobs = GaugeMetricFamily(
            "ftaas_jobs", "Jobs by status and kind.", labels=["status", "kind"]
        )
        for status, kind, count in session.execute(
            select(Job.status, Job.kind, func.count()).group_by(Job.status, Job.kind)
        ):
            jobs.add_metric([status, kind], count)
        yield jobs

        depth = GaugeMetricFamily(
            "ftaas_queue_depth", "Jobs (and files to screen) waiting, by queue.", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "ftaas_queue_oldest_age_seconds",
            "Age of the oldest waiting item, by queue (0 when empty).",
            labels=["queue"],
        )
        empty: tuple[int, int | None] = (0, None)
        waiting = dict.fromkeys((TRAINING_QUEUE, ALIGNMENT_QUEUE, SCREENING_QUEUE), empty)
        since = func.coalesce(Job.enqueued_at, Job.created_at)
        for kind, count, first in session.execute(
            select(Job.kind, func.count(), func.min(since))
            .where(Job.status == JobStatus.QUEUED)
            .group_by(Job.kind)
        ):
            queue = job_queue(kind)  # where the job's message waits
            waiting[queue] = (waiting[queue][0] + count, _min(waiting[queue][1], first))
        files, first_file = session.execute(
            select(func.count(), func.min(File.created_at)).where(
                File.safety_status == "queued", File.deleted_at.is_(None)
            )
        ).one()
        waiting[SCREENING_QUEUE] = (files, first_file)
        for queue, (waiting_n, since_at) in waiting.items():
            depth.add_metric([queue], waiting_n)
            oldest.add_metric([queue], max(0, at - since_at) if since_at is not None else 0)
        yield depth
        yield oldest

        yield self._durations(session)

        failures = session.scalar(
            select(func.count()).where(
                JobEvent.type == "metrics", JobEvent.message.like(GATE_FAILED)
            )
        )
        gate = CounterMetricFamily(
            "ftaas_safety_gate_failures",
            "Checkpoints scored NOT deployable by the release gate (harmful score too high).",
        )
        gate.add_metric([], failures or 0)
        yield gate

        yield self._throughput(session)

    def _durations(self, session: Session) -> Metric:
        seconds = Job.finished_at - Job.started_at
        columns: list[Any] = [Job.kind, Job.status, func.count(), func.sum(seconds)]
        columns += [func.sum(case((seconds <= b, 1), else_=0)) for b in JOB_DURATION_BUCKETS]
        family = HistogramMetricFamily(
            "ftaas_job_duration_seconds",
            "Finished jobs: seconds from first start to the end, by kind and final status.",
            labels=["kind", "status"],
        )
        for kind, status, count, total, *cumulative in session.execute(
            select(*columns)
            .where(and_(Job.finished_at.is_not(None), Job.started_at.is_not(None)))
            .group_by(Job.kind, Job.status)
        ):
            buckets = [
                (str(float(b)), int(n or 0))
                for b, n in zip(JOB_DURATION_BUCKETS, cumulative, strict=True)
            ]
            family.add_metric([kind, status], buckets + [("+Inf", int(count))], float(total or 0))
        return family

    def _throughput(self, session: Session) -> Metric:
        """Training speed of running jobs: the newest step report of each (few rows: one per
        running job)."""
        family = GaugeMetricFamily(
            "ftaas_running_tokens_per_second",
            "Sum of the latest reported training tokens/s of running jobs, by kind.",
            labels=["kind"],
        )
        newest = (
            select(JobEvent.job_id, func.max(JobEvent.seq).label("seq"))
            .join(Job, Job.id == JobEvent.job_id)
            .where(Job.status == JobStatus.RUNNING, JobEvent.type == "metrics")
            .group_by(JobEvent.job_id)
            .subquery()
        )
        totals: dict[str, float] = {}
        for kind, data in session.execute(
            select(Job.kind, JobEvent.data)
            .join(newest, newest.c.seq == JobEvent.seq)
            .join(Job, Job.id == JobEvent.job_id)
        ):
            rate = (data or {}).get("tokens_per_second")
            if isinstance(rate, (int, float)):
                totals[kind] = totals.get(kind, 0.0) + float(rate)
        for kind in JOB_KINDS:
            family.add_metric([kind], totals.get(kind, 0.0))
        return family


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


class RequestMetrics:
    """ASGI middleware: request latency by method, route template and status class."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            template = route_template(scope)
            self.histogram.labels(scope["method"], template, f"{status[0] // 100}xx").observe(
                time.perf_counter() - started
            )


def route_template(scope: Scope) -> str:
    """``/v1/fine_tuning/jobs/ftjob-1`` -> ``/v1/fine_tuning/jobs/{fine_tuning_job_id}``: the
    matched path with each path parameter's value put back as its name (included routers keep
    relative paths on their routes, so the full template is rebuilt from the request)."""
    if scope.get("route") is None:
        return "unmatched"
    params = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    parts = str(scope.get("path", "")).split("/")
    return "/".join(f"{{{params[p]}}}" if p in params else p for p in parts)


def build_registry(factory: sessionmaker[Session]) -> tuple[CollectorRegistry, Histogram]:
    """A registry per app (tests create many apps in one process): the HTTP histogram, the
    database collector, and the other API processes' series in multiprocess mode."""
    registry = CollectorRegistry()
    multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    if multiprocess:
        # Every process writes its samples to files; the exposition sums them, so the live
        # histogram must not be registered for exposition as well (it would count twice).
        MultiProcessCollector(registry)
    histogram = Histogram(
        "ftaas_http_request_duration_seconds",
        "API request latency by method, route template and status class.",
        ["method", "route", "status"],
        buckets=HTTP_BUCKETS,
        registry=CollectorRegistry() if multiprocess else registry,
    )
    registry.register(DatabaseCollector(factory))
    return registry, histogram


router = APIRouter(tags=["Health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (no key; expose on the internal network only)",
    response_class=Response,
    include_in_schema=False,  # operations, not the public API
)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
