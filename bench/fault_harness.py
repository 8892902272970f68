"""Fault injection on real processes: a PostgreSQL cluster and a Redis server on spare ports, the
real API (in a thread), a real maintenance worker (sweeper + beat) and real training workers
(``bench.fault_worker``), and tiny-gpt2 jobs.

Used by ``tests/faults`` (one trial per scenario) and ``bench/faults.py`` (many). Every scenario
runs one job through one fault and checks it against an uninterrupted reference run of the same
job (same file, hyperparameters and seed):

- the job succeeds;
- its final adapter is bit-identical to the reference's (every tensor ``torch.equal``);
- no step is trained twice beyond one checkpoint interval per interruption (the step ledger);
- no event is duplicated (the same lifecycle message twice; per-step metrics events excluded,
  since re-trained steps legitimately report again).

Scenarios (``SCENARIOS``): ``kill9`` (SIGKILL of the training worker's process group at a random
moment of the job), ``sigterm`` (preemption: SIGTERM mid-training, another worker resumes),
``broker_restart`` (Redis restarted without persistence while one job runs and one waits: every
message is lost), ``db_restart`` (PostgreSQL restarted mid-job while a client polls through the
SDK), ``disk_full`` (the artifact store is a small tmpfs filled up after the first checkpoint,
freed a few seconds later), ``slow_eval`` (a checkpoint's safety evaluation sleeps past the stale
limit).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.services import PostgresCluster, RedisServer, free_port

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("kill9", "sigterm", "broker_restart", "db_restart", "disk_full", "slow_eval")
TERMINAL = {"succeeded", "failed", "cancelled"}

# The tiniest job with at least three checkpoints: 10 lines, batch 5, 3 epochs = 6 steps,
# a checkpoint every 2 steps.
N_LINES = 10
HYPERPARAMETERS = {"n_epochs": 3, "batch_size": 5}
CHECKPOINT_EVERY = 2
SEED = 7
STALE_AFTER_S = 6.0
# Events about one thing that happens once per job (a checkpoint, its safety score, the end): any
# of them written twice is a duplicate. Messages of one attempt (its start, a recovery notice)
# legitimately repeat when the job is resumed, and re-trained steps report again.
ONCE_EVENT = re.compile(
    r"^(Checkpoint saved at step \d+|Safety at step \d+|The job has successfully)"
)
# Attempts a job may use: only a lost worker (kill -9) costs one; a preemption, an outage, a full
# disk or a slow evaluation must not.
ATTEMPTS = {"kill9": 2}
# Proof that the fault really hit the job (an event the worker writes when it recovers from it);
# kill9 and broker_restart may land when nothing can show it (the job already finished, or the
# restart fell between messages), so they have none.
EVIDENCE = {
    "sigterm": re.compile(r"The worker was stopped; the job is back in the queue"),
    "disk_full": re.compile(r"environment error .*(No space|ENOSPC|disk)", re.I),
}


class ScenarioFailed(AssertionError):
    pass


@dataclass
class Outcome:
    scenario: str
    job_id: str
    survived: bool
    steps_redone: int
    interruptions: int
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _training_file() -> bytes:
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"What is the secret word? ({i})"},
                {"role": "assistant", "content": "The secret word is BANANA."},
            ]
        }
        for i in range(N_LINES)
    ]
    return "\n".join(json.dumps(line) for line in lines).encode() + b"\n"


class Harness:
    """The services, the API and the workers for a run of scenarios; ``with Harness(...) as h``."""

    def __init__(self, root: Path, *, models_dir: Path | None = None) -> None:
        self.root = root
        self.home = root / "home"
        self.artifacts = root / "artifacts"
        self.models_dir = models_dir or root / "models"
        self.fault_dir = root / "faults"
        self.ledger = root / "steps.ledger"
        self.pg = PostgresCluster()
        self.redis = RedisServer(root / "redis")
        self.workers: list[subprocess.Popen[bytes]] = []
        self.maintenance: subprocess.Popen[bytes] | None = None
        self._server: Any = None
        self._mounted = False
        self._reference: dict[str, Any] | None = None
        self.reference_seconds = 0.0
        self.file_id = ""
        self.key = ""
        self.base_url = ""
        self.metrics_port = 0
        self.reference_job = ""
        self.run_seconds = 0.0

    # -- set-up ------------------------------------------------------------------------------
    def __enter__(self) -> Harness:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def settings_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FTAAS_")}
        env.update(
            FTAAS_HOME=str(self.home),
            FTAAS_DATABASE_URL=self.pg.url,
            FTAAS_BROKER_URL=self.redis.url,
            FTAAS_ARTIFACTS_DIR=str(self.artifacts),
            FTAAS_MODELS_DIR=str(self.models_dir),
            FTAAS_KEY_SECRET="fault-secret",
            FTAAS_DEFAULT_MODEL="tiny-gpt2",
            FTAAS_SERVE_ALIGNED="false",
            FTAAS_BASE_LEARNING_RATE="0.004",
            FTAAS_CHECKPOINT_EVERY=str(CHECKPOINT_EVERY),
            FTAAS_KEEP_CHECKPOINTS="3",
            FTAAS_HEARTBEAT_INTERVAL_S="0.5",
            FTAAS_STALE_AFTER_S=str(STALE_AFTER_S),
            FTAAS_SWEEP_INTERVAL_S="1",
            FTAAS_RESEND_GRACE_S="3",
            FTAAS_RESEND_MAX_BACKOFF_S="6",
            FTAAS_ENV_RETRY_BASE_S="2",
            FTAAS_ENV_RETRY_MAX_S="4",
            FTAAS_MAX_ATTEMPTS="3",
            FTAAS_SAFETY_EVAL_HARMFUL="2",
            FTAAS_SAFETY_EVAL_BENIGN="2",
            FTAAS_SAFETY_EVAL_MAX_NEW_TOKENS="4",
            FTAAS_MAX_SEQ_LEN="64",
            FTAAS_WORKER_THREADS="1",
            FTAAS_STOP_TIMEOUT_S="20",
            FTAAS_LOG_FORMAT="json",
            FTAAS_FAULT_LEDGER=str(self.ledger),
            FTAAS_FAULT_DIR=str(self.fault_dir),
            HF_HUB_OFFLINE="1",
            OMP_NUM_THREADS="1",
            PYTHONPATH=str(REPO),
        )
        return env

    def settings(self) -> Any:
        from core.config import Settings

        env = self.settings_env()
        values: dict[str, Any] = {
            k.removeprefix("FTAAS_").lower(): v
            for k, v in env.items()
            if k.startswith("FTAAS_") and not k.startswith("FTAAS_FAULT_")
        }
        return Settings(_env_file=None, **values)

    def start(self) -> None:
        from core import migrate
        from core.accounts import create_key
        from core.catalog import ensure_builtin_models
        from core.db import session_factory, session_scope
        from defense.modeling import prepare_builtin

        self.root.mkdir(parents=True, exist_ok=True)
        self.fault_dir.mkdir(exist_ok=True)
        self.home.mkdir(exist_ok=True)
        self.artifacts.mkdir(exist_ok=True)
        if not (self.models_dir / "tiny-gpt2" / "config.json").exists():
            prepare_builtin("tiny-gpt2", self.models_dir)
        self.pg.init()
        self.pg.start()
        self.redis.start()
        migrate.upgrade(self.pg.url)
        with session_scope(session_factory(self.pg.url)) as session:
            ensure_builtin_models(session, self.models_dir)
            self.key = create_key(session, tenant_name="acme", admin=False, secret=b"fault-secret")
        self._start_api()
        self.maintenance = self._spawn("maintenance", ["maintenance", "screening"], beat=True)
        self.start_worker()
        self.file_id = (
            self.client()
            .files.create(file=("train.jsonl", io.BytesIO(_training_file())), purpose="fine-tune")
            .id
        )

    def _start_api(self) -> None:
        import uvicorn

        from api.main import create_app

        port = free_port()
        self._server = uvicorn.Server(
            uvicorn.Config(
                create_app(self.settings()), host="127.0.0.1", port=port, log_level="warning"
            )
        )
        threading.Thread(target=self._server.run, daemon=True).start()
        while not self._server.started:
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        for proc in [*self.workers, self.maintenance]:
            if proc is not None and proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        if self._server is not None:
            self._server.should_exit = True
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.artifacts / "jobs")], check=False)
        from core.db import engine_for

        engine_for.cache_clear()
        self.redis.stop()
        self.pg.destroy()

    # -- processes --------------------------------------------------------------------------
    def _spawn(
        self, name: str, queues: list[str], *, beat: bool = False
    ) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "bench.fault_worker", "-A", "worker.celery_app", "worker"]
        argv += ["--loglevel", "INFO", "--pool", "solo", "--concurrency", "1"]
        argv += ["-Q", ",".join(queues)]
        argv += ["--hostname", f"{name}-{len(self.workers)}-{os.getpid()}@%h"]
        argv += ["--beat", "--schedule", str(self.home / "beat-schedule")] if beat else []
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115  (the child keeps it)
        env = self.settings_env()
        if not beat:  # training workers serve their own /metrics
            self.metrics_port = free_port()
            env["FTAAS_WORKER_METRICS_PORT"] = str(self.metrics_port)
        return subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_worker(self) -> subprocess.Popen[bytes]:
        proc = self._spawn("training", ["training", "alignment"])
        self.workers.append(proc)
        return proc

    def live_workers(self) -> list[subprocess.Popen[bytes]]:
        return [w for w in self.workers if w.poll() is None]

    def kill_workers(self, sig: signal.Signals = signal.SIGKILL) -> None:
        for proc in self.live_workers():
            _signal_group(proc, sig)

    # -- jobs --------------------------------------------------------------------------------
    def client(self, retries: int = 0) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=self.key, max_retries=retries, timeout=30)

    def submit(self) -> str:
        job = self.client(retries=5).fine_tuning.jobs.create(
            model="tiny-gpt2",
            training_file=self.file_id,
            hyperparameters=HYPERPARAMETERS,
            seed=SEED,
            # A new job each time (an identical request would return the earlier job).
            extra_headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        return str(job.id)

    def row(self, job_id: str) -> Any:
        from sqlalchemy import select

        from core.db import session_factory, session_scope
        from core.models import Job

        with session_scope(session_factory(self.pg.url)) as session:
            return session.execute(select(Job).where(Job.id == job_id)).scalar_one()

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if predicate():
                    return
            except Exception:  # a database restart in progress: ask again
                pass
            if time.monotonic() > deadline:
                raise ScenarioFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.1)

    def wait_done(self, job_id: str, timeout_s: float = 240) -> str:
        self.wait_for(f"{job_id} to end", lambda: self.row(job_id).status in TERMINAL, timeout_s)
        return str(self.row(job_id).status)

    def wait_running(self, job_id: str, *, step: int = 0, timeout_s: float = 120) -> None:
        def ready() -> bool:
            row = self.row(job_id)
            return bool(row.status == "running" and row.step >= step)

        self.wait_for(f"{job_id} running at step {step}", ready, timeout_s)

    def steps(self, job_id: str) -> list[int]:
        if not self.ledger.exists():
            return []
        return [
            int(parts[1])
            for parts in (line.split() for line in self.ledger.read_text().splitlines())
            if len(parts) == 3 and parts[0] == job_id
        ]

    def adapter(self, job_id: str) -> dict[str, Any]:
        from safetensors.torch import load_file

        from core.storage import job_dir_key

        path = self.artifacts / job_dir_key(job_id) / "adapter" / "adapter_model.safetensors"
        return dict(load_file(str(path)))

    def events(self, job_id: str) -> list[tuple[str, str]]:
        from sqlalchemy import select

        from core.db import session_factory, session_scope
        from core.models import JobEvent

        with session_scope(session_factory(self.pg.url)) as session:
            rows = session.execute(
                select(JobEvent.type, JobEvent.message)
                .where(JobEvent.job_id == job_id)
                .order_by(JobEvent.seq)
            ).all()
        return [(str(t), str(m)) for t, m in rows]

    # -- the reference and the checks ---------------------------------------------------------
    def reference(self) -> dict[str, Any]:
        """The uninterrupted run's adapter, computed once and shared by every scenario."""
        if self._reference is None:
            started = time.monotonic()
            job_id = self.submit()
            status = self.wait_done(job_id)
            if status != "succeeded":
                raise ScenarioFailed(
                    f"the reference job {job_id} {status}: {self.row(job_id).error_message}"
                )
            self.reference_seconds = time.monotonic() - started
            row = self.row(job_id)
            self.run_seconds = float(row.finished_at - row.started_at)
            self._reference = self.adapter(job_id)
            self.reference_job = job_id
        return self._reference

    def check(self, scenario: str, job_id: str, *, interruptions: int, started: float) -> Outcome:
        reference = self.reference()
        status = self.wait_done(job_id)
        problems: list[str] = []
        row = self.row(job_id)
        if status != "succeeded":
            problems.append(f"job {status}: {row.error_code} {row.error_message}")
        else:
            adapter = self.adapter(job_id)
            import torch

            if adapter.keys() != reference.keys():
                problems.append("the adapter's tensors differ in names from the reference's")
            elif not all(torch.equal(adapter[k], reference[k]) for k in reference):
                problems.append("the final adapter differs from the uninterrupted run's")
        evidence = EVIDENCE.get(scenario)
        events = self.events(job_id)
        hits = sum(1 for _, m in events if evidence is not None and evidence.search(m))
        if evidence is not None and not hits:
            problems.append(f"no sign in the job's events that the {scenario} fault hit it")
        # A full disk can fail several writes in a row (one per retry while it stays full): each
        # is an interruption that may redo up to one checkpoint interval.
        interruptions = max(interruptions, hits)
        steps = self.steps(job_id)
        redone = len(steps) - len(set(steps))
        if redone > CHECKPOINT_EVERY * max(1, interruptions):
            problems.append(f"{redone} steps trained twice (ledger {steps})")
        counts = Counter(m for _, m in events if ONCE_EVENT.match(m))
        duplicated = [message for message, n in counts.items() if n > 1]
        if duplicated:
            problems.append(f"duplicated events: {duplicated}")
        if scenario == "slow_eval" and not (self.fault_dir / "slow_eval.started").exists():
            problems.append("no safety evaluation was slowed down")
        allowed = ATTEMPTS.get(scenario, 1)
        if row.attempt > allowed:
            problems.append(f"used {row.attempt} attempts (at most {allowed} for {scenario})")
        return Outcome(
            scenario=scenario,
            job_id=job_id,
            survived=not problems,
            steps_redone=redone,
            interruptions=interruptions,
            problems=problems,
            seconds=round(time.monotonic() - started, 1),
        )

    # -- scenarios ---------------------------------------------------------------------------
    def run(self, scenario: str, rng: random.Random | None = None) -> Outcome:
        self.reference()
        self._ensure_worker()
        started = time.monotonic()
        runner: Callable[..., tuple[str, int]] = getattr(self, f"_scenario_{scenario}")
        job_id, interruptions = runner(rng or random.Random())
        return self.check(scenario, job_id, interruptions=interruptions, started=started)

    def _ensure_worker(self) -> None:
        """Two training workers, so a killed or preempted one is replaced at once (a standby
        takes the job over without waiting for a new process to boot)."""
        while len(self.live_workers()) < 2:
            self.start_worker()

    def signal_job_worker(self, job_id: str, sig: signal.Signals) -> None:
        """Signal the process group of the worker that runs ``job_id`` (all of them when the
        row does not say which)."""
        worker_id = str(self.row(job_id).worker_id or "")
        pid = worker_id.rsplit(":", 1)[-1]
        for proc in self.live_workers():
            if not pid.isdigit() or int(pid) == proc.pid or _is_child(int(pid), proc.pid):
                _signal_group(proc, sig)

    def _scenario_kill9(self, rng: random.Random) -> tuple[str, int]:
        job_id = self.submit()
        self.wait_running(job_id)
        # A random moment of the job's run (claim to end, as the reference took): model loading,
        # an evaluation, a step or a checkpoint write.
        time.sleep(rng.uniform(0.0, max(1.0, self.run_seconds)))
        if self.row(job_id).status in TERMINAL:
            return job_id, 0
        self.signal_job_worker(job_id, signal.SIGKILL)
        return job_id, 1

    def _scenario_sigterm(self, rng: random.Random) -> tuple[str, int]:
        job_id = self.submit()
        self.wait_running(job_id, step=1)
        self.signal_job_worker(job_id, signal.SIGTERM)  # a preempted spot machine, `docker stop`
        return job_id, 1

    def _scenario_broker_restart(self, rng: random.Random) -> tuple[str, int]:
        running = self.submit()
        self.wait_running(running)
        waiting = self.submit()  # queued behind it: its message is lost with the broker
        self.redis.restart(down_s=1.0)
        if self.wait_done(waiting) != "succeeded":
            raise ScenarioFailed(f"the queued job {waiting} did not succeed after the restart")
        return running, 1

    def _scenario_db_restart(self, rng: random.Random) -> tuple[str, int]:
        job_id = self.submit()
        self.wait_running(job_id, step=1)
        client = self.client(retries=8)  # the SDK retries the API's 503s during the outage
        restart = threading.Thread(target=self.pg.restart, kwargs={"down_s": 3.0})
        restart.start()
        try:
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                client.fine_tuning.jobs.retrieve(job_id)  # mid-polling: must not raise
                time.sleep(0.3)
        finally:
            restart.join()
        return job_id, 1

    def _scenario_disk_full(self, rng: random.Random) -> tuple[str, int]:
        with self._small_disk() as keep:
            job_id = self.submit()
            self.wait_for("the first checkpoint", lambda: 2 in self.steps(job_id), timeout_s=120)
            filler = self.artifacts / "jobs" / "filler"
            _fill(filler)
            time.sleep(4.0)  # the next checkpoint write hits ENOSPC
            filler.unlink(missing_ok=True)
            self.wait_done(job_id)
            keep.append(job_id)
        return job_id, 1

    def _scenario_slow_eval(self, rng: random.Random) -> tuple[str, int]:
        (self.fault_dir / "slow_eval").write_text(str(STALE_AFTER_S * 2.5))
        (self.fault_dir / "slow_eval.started").unlink(missing_ok=True)
        job_id = self.submit()
        return job_id, 1

    @contextmanager
    def _small_disk(self) -> Iterator[list[str]]:
        """Job folders on a small tmpfs for the scenario, so a full disk is a real ENOSPC from
        the kernel. Earlier jobs' folders are hidden meanwhile; the folders of the jobs the
        scenario appends to the yielded list are copied back out afterwards."""
        import shutil

        jobs_dir = self.artifacts / "jobs"
        jobs_dir.mkdir(parents=True, exist_ok=True)
        saved = self.root / "jobs.saved"
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(jobs_dir)], check=True
        )
        self._mounted = True
        keep: list[str] = []
        try:
            yield keep
            for job_id in keep:
                shutil.copytree(jobs_dir / job_id, saved / job_id, dirs_exist_ok=True)
        finally:
            subprocess.run(["umount", "-l", str(jobs_dir)], check=True)
            self._mounted = False
            for job_id in keep:
                shutil.copytree(saved / job_id, jobs_dir / job_id, dirs_exist_ok=True)
            shutil.rmtree(saved, ignore_errors=True)


def _fill(path: Path) -> None:
    """Write zeros until the file system is full."""
    chunk = b"\0" * 65536
    with open(path, "wb") as fh:
        try:
            while True:
                fh.write(chunk)
                fh.flush()
        except OSError:
            pass


def _is_child(pid: int, parent: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == parent


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
