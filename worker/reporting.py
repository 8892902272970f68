"""JobReporter: the bridge from defense's training callbacks to the job row.

It heartbeats, writes throttled ``metrics`` events (with the time left, measured from the steps
done so far, checkpoint evaluations included), records checkpoints with their safety scores and
release-gate decision (``assess``, run before the row is written), and answers ``should_stop`` by
asking the row whether the job is still ours to run (cancel, pause and the sweeper all show up
as a heartbeat that no longer matches).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import jobs
from core.db import session_scope
from core.models import Checkpoint, Job, now
from core.quotas import charge_running_time, wall_clock_message
from worker.safety import describe

Assess = Callable[[int], tuple[dict[str, Any], bool | None]]
"""Scores the model in memory at a checkpoint's step: (safety scores, deployable or None)."""


class JobReporter:
    def __init__(
        self, factory: sessionmaker[Session], claim: jobs.Claim, *, interval_s: float
    ) -> None:
        self.factory = factory
        self.claim = claim
        self.interval_s = interval_s
        self.total_steps = 0
        self._last_write = 0.0
        self._last_check = 0.0
        self._stop = False
        self._started = time.monotonic()
        self._first_step: int | None = None
        self._checkpoint_name: Callable[[int], str] = lambda step: f"ckpt-step-{step}"
        self._store_root = Path(".")
        self._keep = 3
        self._assess: Assess | None = None
        self._charged_at = time.monotonic()  # running time is charged from the claim on
        self.wall_clock_limit_s: int | None = None  # set when the job ran past its limit

    # -- set-up -----------------------------------------------------------------------------
    def begin(
        self,
        *,
        total_steps: int,
        checkpoint_name: Callable[[int], str],
        store_root: Path,
        keep: int,
        assess: Assess | None = None,
    ) -> None:
        self.total_steps = total_steps
        self._checkpoint_name = checkpoint_name
        self._store_root = store_root
        self._keep = keep
        self._assess = assess
        with session_scope(self.factory) as session:
            jobs.heartbeat(session, self.claim, total_steps=total_steps)

    def message(
        self, text: str, *, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        with session_scope(self.factory) as session:
            jobs.add_event(session, self._job(session), text, level=level, data=data)

    # -- callbacks from defense.fit ------------------------------------------------------------
    def on_step(self, metrics: Any) -> None:
        step = int(metrics.step)
        if self._first_step is None:
            self._first_step, self._started = step, time.monotonic()
        last = step >= self.total_steps
        if not last and time.monotonic() - self._last_write < self.interval_s:
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
        self._stop = self._stop or not owned

    def should_stop(self) -> bool:
        if self._stop:
            return True
        if time.monotonic() - self._last_check >= min(self.interval_s, 1.0):
            self._last_check = time.monotonic()
            with session_scope(self.factory) as session:
                self._stop = not jobs.heartbeat(session, self.claim)
                if not self._stop:
                    self._stop = self._over_wall_clock(session)
        return self._stop

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
        safety: dict[str, Any] | None = None
        deployable: bool | None = None
        if self._assess is not None and not self._stop and not self._has_safety(step):
            safety, deployable = self._assess(step)
            if "validation_loss" in safety:
                metrics["full_valid_loss"] = float(safety["validation_loss"])
        with session_scope(self.factory) as session:
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
                        safety=safety,
                        deployable=deployable,
                    )
                )
            elif safety is not None:
                existing.safety, existing.deployable = safety, deployable
                existing.metrics = {**(existing.metrics or {}), **metrics}
            jobs.add_event(
                session, job, f"Checkpoint saved at step {step}.", type="metrics", data=metrics
            )
            if safety is not None:
                verdict = {True: "deployable", False: "NOT deployable", None: "not gated"}
                jobs.add_event(
                    session,
                    job,
                    f"Safety at step {step}: {describe(safety)} ({verdict[deployable]}).",
                    type="metrics",
                    data={"step": step, **safety, "deployable": deployable},
                )
            session.flush()
            self._prune(session, job)

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
        with session_scope(self.factory) as session:
            return jobs.heartbeat(session, self.claim, **values)

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

    @staticmethod
    def stopped_errors() -> type[Exception]:
        from defense.callbacks import TrainingStopped

        return TrainingStopped

    def record_stop(self, stopped: Exception) -> None:
        step = getattr(stopped, "step", None)
        if self.wall_clock_limit_s is not None:
            message = wall_clock_message(limit_s=self.wall_clock_limit_s, step=step)
            with session_scope(self.factory) as session:
                if jobs.fail(session, self.claim, code="wall_clock_limit", message=message):
                    jobs.add_event(session, self._job(session), message, level="error")
            return
        with session_scope(self.factory) as session:
            job = self._job(session)
            if job.status == jobs.JobStatus.CANCELLED:
                jobs.add_event(session, job, f"Job cancelled at step {step}.")
            elif job.status == jobs.JobStatus.PAUSED:
                jobs.add_event(
                    session,
                    job,
                    f"Job paused at step {step}; resume continues from this checkpoint.",
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
