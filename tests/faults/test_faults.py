"""Fault injection on real processes (bench/fault_harness.py): one trial per scenario here,
``bench/faults.py`` repeats them. Every scenario's job must succeed with an adapter bit-identical
to an uninterrupted run's, train no step twice beyond one checkpoint interval per interruption,
and write no event twice.

``FTAAS_FAULT_KILL_TRIALS`` (default 1) sets how many random ``kill -9`` moments are tried.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterator

import httpx
import pytest

from bench.fault_harness import Harness
from bench.services import pg_bin


def _has_postgres() -> bool:
    try:
        pg_bin("initdb")
    except FileNotFoundError:
        return False
    return True


pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        shutil.which("redis-server") is None or not _has_postgres() or os.geteuid() != 0,
        reason="needs redis-server, PostgreSQL server binaries and root (tmpfs, runuser)",
    ),
]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with Harness(tmp_path_factory.mktemp("faults")) as h:
        h.reference()  # one uninterrupted run, shared by every scenario
        yield h


def _assert_survived(outcome: object) -> None:
    assert outcome.survived, f"{outcome}"


def test_reference_run_is_observable(harness: Harness) -> None:
    """The uninterrupted run: JSON log lines carry its job id; the worker's /metrics counts it."""
    job_id = harness.reference_job
    assert sorted(set(harness.steps(job_id))) == [1, 2, 3, 4, 5, 6]

    def tagged() -> bool:  # the task's last lines follow the row's `succeeded` by a moment
        lines = (harness.root / "training.log").read_text().splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        return any(entry.get("job_id") == job_id for entry in entries)

    def counted() -> bool:
        url = f"http://127.0.0.1:{harness.metrics_port}/metrics"
        text = httpx.get(url, timeout=10).text
        return 'ftaas_worker_tasks_total{outcome="ok",task="ftaas.jobs.run"}' in text and (
            "ftaas_worker_step_seconds_count" in text
        )

    harness.wait_for("a JSON log line with the job id", tagged, timeout_s=20)
    # The job ran on one of the two training workers; the newest serves metrics_port.
    harness.wait_for("the worker's metrics", counted, timeout_s=20)


def test_kill9_at_random_moments(harness: Harness) -> None:
    rng = random.Random(os.environ.get("FTAAS_FAULT_SEED", "15"))
    for _ in range(int(os.environ.get("FTAAS_FAULT_KILL_TRIALS", "1"))):
        _assert_survived(harness.run("kill9", rng))


def test_broker_restart_loses_nothing(harness: Harness) -> None:
    _assert_survived(harness.run("broker_restart"))


def test_db_restart_mid_job_and_mid_polling(harness: Harness) -> None:
    _assert_survived(harness.run("db_restart"))


def test_sigterm_preemption(harness: Harness) -> None:
    _assert_survived(harness.run("sigterm"))


def test_disk_full_during_a_checkpoint(harness: Harness) -> None:
    _assert_survived(harness.run("disk_full"))


def test_slow_eval_longer_than_the_stale_limit(harness: Harness) -> None:
    _assert_survived(harness.run("slow_eval"))
