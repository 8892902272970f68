"""JobReporter: the bridge from defense's training callbacks to the job row.

It heartbeats, writes throttled ``metrics`` events (with the time left, measured from the steps
done so far, checkpoint evaluations included), records checkpoints with their safety scores and
release-gate decision, and answers ``should_stop`` by asking the row whether the job is still ours
to run.

Every long phase is alive (docs/worker.md): ``alive()`` runs a heartbeat thread for the whole job
(model preparation, answer generation, safety evaluations, training) and installs
``defense.progress.tick``, which the long loops call between batches and which raises when the
job must stop: ``Preempted`` (the worker is shutting down), ``ClaimLost`` (another attempt owns
the row: write nothing more), ``JobStopped`` (cancelled or paused outside the training loop).

A checkpoint is listed iff its files are complete: its row is written right after the files
(``defense.checkpoint.save_checkpoint`` commits them with a rename), before its safety evaluation,
which only adds scores to the row; at the start of every attempt, complete checkpoint folders
without a row (a kill between the rename and the row) get their row back, and incomplete or
surplus folders are pruned.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import jobs
from core.db import session_scope
from core.models import Checkpoint, Job, now
from core.quotas import charge_running_time, wall_clock_message
from worker import preemption
from worker.errors import TRANSIENT_ERRORS, ClaimLost, JobStopped, Preempted
from worker.observability import observe_step
from worker.safety import describe

log = logging.getLogger(__name__)

Assess = Callable[[int], tuple[dict[str, Any], bool | None]]
"""Scores the model in memory at a checkpoint's step: (safety scores, deployable or None)."""

COMPLETE = "COMPLETE"  # defense.checkpoint.COMPLETE (not imported: it pulls in torch)


class JobReporter:
    def __init__(
        self, factory: sessionmaker[Session], claim: jobs.Claim, *, interval_s: float
    ) -> None:
        self.factory = factory
        self.claim = claim
        self.interval_s = interval_s
        self.total_steps = 0
        self.ownership = jobs.Ownership.OWNED
        self._last_write = 0.0
        self._last_check = 0.0
        self._started = time.monotonic()
        self._first_step: int | None = None
        self._step: int | None = None  # the last step trained in this attempt
        self._checkpoint_name: Callable[[int], str] = lambda step: f"ckpt-step-{step}"
        self._store_root = Path(".")
        self._keep = 3
        self._every = 0
        self._assess: Assess | None = None
        self._charged_at = time.monotonic()  # running time is charged from the claim on
        self.wall_clock_limit_s: int | None = None  # set when the job ran past its limit

    # -- liveness ---------------------------------------------------------------------------------
    @contextmanager
    def alive(self) -> Iterator[None]:
        """Heartbeat the row every ``interval_s`` from a thread, and make ``defense.progress.tick``
        stop the work when the job is no longer ours, for as long as the block runs."""
        from defense.progress import ticking

        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.interval_s):
                try:
                    self._check()
                except TRANSIENT_ERRORS:  # the database is away: keep working, try again
                    log.warning("job %s: heartbeat failed; retrying", self.claim.job_id)

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.claim.job_id}", daemon=True)
        thread.start()
        try:
            with ticking(self.tick):
                yield
        finally:
            done.set()
            thread.join(timeout=max(5.0, 2 * self.interval_s))

    def tick(self) -> None:
        """Raise if the work must stop now (called between batches of every long phase)."""
        if preemption.requested():
            raise Preempted("the worker is shutting down")
        if self.ownership == jobs.Ownership.LOST:
            raise ClaimLost(f"job {self.claim.job_id} is no longer this worker's")
        if self.ownership in (jobs.Ownership.PAUSED, jobs.Ownership.CANCELLED):
            raise JobStopped(str(self.ownership))

    def _check(self, **values: Any) -> bool:
        """Heartbeat (with ``values``); on a miss, find out why. True while the job is ours."""
        with session_scope(self.factory) as session:
            if jobs.heartbeat(session, self.claim, **values):
                return True
            self.ownership = jobs.ownership(session, self.claim)
        return False

    # -- set-up -----------------------------------------------------------------------------
    def begin(
        self,
        *,
        total_steps: int,
        checkpoint_name: Callable[[int], str],
        store_root: Path,
        keep: int,
        assess: Assess | None = None,
        checkpoint_dir: Path | None = None,
        checkpoint_every: int = 0,
    ) -> None:
        self.total_steps = total_steps
        self._checkpoint_name = checkpoint_name
        self._store_root = store_root
        self._keep = keep
        self._assess = assess
        self._every = checkpoint_every
        self._check(total_steps=total_steps)
        self.tick()
        if checkpoint_dir is not None:
            self._reconcile(checkpoint_dir)

    def message(
        self, text: str, *, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        with session_scope(self.factory) as session:
            jobs.add_event(session, self._job(session), text, level=level, data=data)

    # -- callbacks from defense.fit ------------------------------------------------------------
    def on_step(self, metrics: Any) -> None:
        step = self._step = int(metrics.step)
        observe_step(self.claim.job_id, float(metrics.tokens_per_second))
        if self._first_step is None:
            self._first_step, self._started = step, time.monotonic()
        last = step >= self.total_steps
        # Before a checkpoint the row is asked afresh, so a lost claim writes no checkpoint.
        checkpoint_next = last or (self._every > 0 and step % self._every == 0)
        if not checkpoint_next and time.monotonic() - self._last_write < self.interval_s:
            self._raise_if_lost()
            return
        self._last_write = time.monotonic()
        data = {
            "step": step,
            "total_steps": self.total_steps,
            "train_loss": float(metrics.loss),
            "tokens_per_second": round(float(metrics.tokens_per_second), 2),
            "learning_rate": float(metrics.learning_rate),
            "epoch": int(metrics.epoch),
        }
        finish = self._estimated_finish(step)
        left = ""
        if finish is not None:
            data["estimated_finish"] = finish
            left = f", about {_human(finish - now())} left"
        with session_scope(self.factory) as session:
            owned = jobs.heartbeat(session, self.claim, step=step, estimated_finish=finish)
            if owned:
                jobs.add_event(
                    session,
                    self._job(session),
                    f"Step {step}/{self.total_steps}: training loss={float(metrics.loss):.4f}"
                    + left,
                    type="metrics",
                    data=data,
                )
            else:
                self.ownership = jobs.ownership(session, self.claim)
        self._raise_if_lost()

    def should_stop(self) -> bool:
        """Stop before the next step (the loop checkpoints first): preempted, paused, cancelled.
        A lost claim raises instead: the loop must not write a checkpoint for someone else's
        attempt."""
        if preemption.requested():
            return True
        if self.ownership == jobs.Ownership.OWNED and (
            time.monotonic() - self._last_check >= min(self.interval_s, 1.0)
        ):
            self._last_check = time.monotonic()
            self._check()
            if self.ownership == jobs.Ownership.OWNED:
                with session_scope(self.factory) as session:
                    self._over_wall_clock(session)
        self._raise_if_lost()
        return self.ownership != jobs.Ownership.OWNED or self.wall_clock_limit_s is not None

    def _raise_if_lost(self) -> None:
        if self.ownership == jobs.Ownership.LOST:
            raise ClaimLost(f"job {self.claim.job_id} is no longer this worker's")

    def _over_wall_clock(self, session: Session) -> bool:
        """Charge the running time since the last check; past the job's limit, stop (fit
        checkpoints first) and ``record_stop`` fails the job with ``wall_clock_limit``."""
        charged_at, self._charged_at = self._charged_at, time.monotonic()
        running, limit = charge_running_time(
            session, self.claim.job_id, self._charged_at - charged_at
        )
        if limit is not None and running >= limit:
            self.wall_clock_limit_s = limit
        return self.wall_clock_limit_s is not None

    def on_checkpoint(self, info: Any) -> None:
        step = int(info.step)
        adapter = Path(info.path) / "adapter"
        metrics = {"step": step, **{k: float(v) for k, v in dict(info.metrics).items()}}
        # The files are complete (renamed into place): list the checkpoint now, score it after.
        self._list_checkpoint(step, adapter, metrics, announce=True)
        stopping = preemption.requested() or self.ownership != jobs.Ownership.OWNED
        if self._assess is None or stopping or self._has_safety(step):
            return
        safety, deployable = self._assess(step)
        if "validation_loss" in safety:
            metrics["full_valid_loss"] = float(safety["validation_loss"])
        with session_scope(self.factory) as session:
            if not jobs.heartbeat(session, self.claim):
                self.ownership = jobs.ownership(session, self.claim)
                if self.ownership == jobs.Ownership.LOST:
                    raise ClaimLost(f"job {self.claim.job_id} is no longer this worker's")
            job = self._job(session)
            row = session.scalar(
                select(Checkpoint).where(
                    Checkpoint.job_id == job.id, Checkpoint.step_number == step
                )
            )
            if row is not None:
                row.safety, row.deployable = safety, deployable
                row.metrics = {**(row.metrics or {}), **metrics}
            verdict = {True: "deployable", False: "NOT deployable", None: "not gated"}
            jobs.add_event(
                session,
                job,
                f"Safety at step {step}: {describe(safety)} ({verdict[deployable]}).",
                type="metrics",
                data={"step": step, **safety, "deployable": deployable},
            )

    def _list_checkpoint(
        self, step: int, adapter: Path, metrics: dict[str, Any], *, announce: bool
    ) -> None:
        with session_scope(self.factory) as session:
            if not jobs.heartbeat(session, self.claim):
                self.ownership = jobs.ownership(session, self.claim)
                if self.ownership == jobs.Ownership.LOST:
                    raise ClaimLost(f"job {self.claim.job_id} is no longer this worker's")
            job = self._job(session)
            existing = session.scalar(
                select(Checkpoint).where(
                    Checkpoint.job_id == job.id, Checkpoint.step_number == step
                )
            )
            if existing is None:
                session.add(
                    Checkpoint(
                        job_id=job.id,
                        tenant_id=job.tenant_id,
                        step_number=step,
                        metrics=metrics,
                        train_loss=metrics.get("train_loss"),
                        storage_key=str(adapter.relative_to(self._store_root)),
                        fine_tuned_model_checkpoint=self._checkpoint_name(step),
                    )
                )
                if announce:
                    jobs.add_event(
                        session,
                        job,
                        f"Checkpoint saved at step {step}.",
                        type="metrics",
                        data=metrics,
                    )
            session.flush()
            self._prune(session, job)

    def _reconcile(self, checkpoint_dir: Path) -> None:
        """List complete checkpoint folders that lost their row (a kill between the files and
        the row), then prune: surplus checkpoints and leftovers of interrupted writes."""
        if not checkpoint_dir.is_dir():
            return
        for entry in sorted(checkpoint_dir.iterdir()):
            name = entry.name
            if name.startswith(".tmp-") or name.startswith(".old-"):
                shutil.rmtree(entry, ignore_errors=True)
            elif name.startswith("step-") and not (entry / COMPLETE).is_file():
                shutil.rmtree(entry, ignore_errors=True)
            elif name.startswith("step-"):
                step = int(name.removeprefix("step-"))
                try:
                    raw = json.loads((entry / "metrics.json").read_text())
                except (OSError, ValueError):
                    raw = {}
                metrics = {"step": step, **{k: float(v) for k, v in raw.items() if k != "step"}}
                self._list_checkpoint(step, entry / "adapter", metrics, announce=False)

    def checkpoint_safety(self, step: int) -> tuple[dict[str, Any] | None, bool | None]:
        """The stored scores and gate decision of this job's checkpoint at ``step``."""
        with session_scope(self.factory) as session:
            row = session.scalar(
                select(Checkpoint).where(
                    Checkpoint.job_id == self.claim.job_id, Checkpoint.step_number == step
                )
            )
            return (row.safety, row.deployable) if row is not None else (None, None)

    def _has_safety(self, step: int) -> bool:
        return self.checkpoint_safety(step)[0] is not None

    # -- endings ---------------------------------------------------------------------------------
    def record(self, **values: Any) -> bool:
        """Write columns of the job row (with a heartbeat); ``False``: no longer ours."""
        owned = self._check(**values)
        self._raise_if_lost()
        return owned

    def succeed(self, *, fine_tuned_model: str, trained_tokens: int, **values: Any) -> bool:
        with session_scope(self.factory) as session:
            done = jobs.finish(
                session,
                self.claim,
                fine_tuned_model=fine_tuned_model,
                trained_tokens=trained_tokens,
                step=self.total_steps,
                estimated_finish=None,
                **values,
            )
            if done:
                jobs.add_event(session, self._job(session), "The job has successfully completed.")
            return done

    def record_stop(self, step: int | None) -> None:
        """The event of a pause or cancel; ``step`` None (stopped between batches of an
        evaluation, not by the loop) names the last step trained."""
        step = step if step is not None else self._step
        where = f" at step {step}" if step is not None else ""
        if self.wall_clock_limit_s is not None:
            message = wall_clock_message(limit_s=self.wall_clock_limit_s, step=step)
            with session_scope(self.factory) as session:
                if jobs.fail(session, self.claim, code="wall_clock_limit", message=message):
                    jobs.add_event(session, self._job(session), message, level="error")
            return
        with session_scope(self.factory) as session:
            job = self._job(session)
            if job.status == jobs.JobStatus.CANCELLED:
                jobs.add_event(session, job, f"Job cancelled{where}.")
            elif job.status == jobs.JobStatus.PAUSED:
                jobs.add_event(
                    session,
                    job,
                    f"Job paused{where}; resume continues from the last checkpoint.",
                )

    # -- helpers ---------------------------------------------------------------------------------
    def _job(self, session: Session) -> Job:
        return session.execute(select(Job).where(Job.id == self.claim.job_id)).scalar_one()

    def _estimated_finish(self, step: int) -> int | None:
        done = step - (self._first_step or step)
        if done <= 0 or self.total_steps <= step:
            return None
        per_step = (time.monotonic() - self._started) / done
        return now() + int(per_step * (self.total_steps - step))

    def _prune(self, session: Session, job: Job) -> None:
        """Keep the newest ``keep`` checkpoints (as OpenAI keeps the last three)."""
        rows = list(
            session.scalars(
                select(Checkpoint)
                .where(Checkpoint.job_id == job.id)
                .order_by(Checkpoint.step_number.desc())
            )
        )
        for old in rows[self._keep :]:
            shutil.rmtree((self._store_root / old.storage_key).parent, ignore_errors=True)
            session.delete(old)


def _human(seconds: int) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
