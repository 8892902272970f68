"""The worker's error family, at the bottom of ``worker/`` (every worker module may import it; it
imports nothing from the worker).

One base, ``WorkerError``, with a ``retryable`` flag that decides what happens to the job:

* not retryable (``JobFailed`` and its kinds): the job fails with ``code`` and a tenant-safe
  message; running it again would fail the same way.
* retryable: the job goes back to ``queued`` and runs again later, without using up an attempt
  (``Preempted``: the worker is stopping; ``EnvironmentFault``: disk full, I/O error, infrastructure
  that may recover) or the worker just stops touching it (``ClaimLost``: another worker owns it).

``classify`` turns any exception into one of these; ``tenant_message`` keeps server paths out of
what a tenant reads.
"""

from __future__ import annotations

import errno
import os
import re

from sqlalchemy.exc import OperationalError

# Infrastructure hiccups worth retrying by Celery (the database or the broker is down).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    ConnectionError,
    TimeoutError,
)

# OS errors that say the machine, not the job, is at fault: retried later with backoff.
ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE}
)

_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@+~-]+){2,}/?")


def tenant_message(text: str) -> str:
    """``text`` with absolute server paths replaced by ``<path>`` (the last part is kept when it
    is a plain file name, since it can help: ``<path>/adapter_config.json``)."""

    def hide(match: re.Match[str]) -> str:
        last = match.group(0).rstrip("/").rsplit("/", 1)[-1]
        return f"<path>/{last}" if "." in last else "<path>"

    return _PATH.sub(hide, text)


class WorkerError(Exception):
    """Base of every error the worker raises on purpose."""

    retryable = False
    code = "training_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = tenant_message(message)
        if code is not None:
            self.code = code
        self.param = param


class JobFailed(WorkerError):
    """A deterministic failure, recorded on the job with ``code`` and never retried."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message, code=code, param=param)


class ModelUnavailable(JobFailed):
    def __init__(self, message: str) -> None:
        super().__init__("model_not_available", message, "model")


class ClaimLost(WorkerError):
    """The job row is no longer this worker's (the sweeper re-queued it, or another attempt
    owns it): stop at once and write nothing more, not even a checkpoint."""

    retryable = True
    code = "claim_lost"


class JobStopped(WorkerError):
    """The job was cancelled or paused while no training loop was running (no checkpoint)."""

    code = "stopped"

    def __init__(self, status: str) -> None:
        super().__init__(f"job {status}")
        self.status = status


class Preempted(WorkerError):
    """The worker process was told to stop (SIGTERM/SIGINT): the job is given back to the queue
    after a checkpoint, without using up an attempt."""

    retryable = True
    code = "preempted"


class EnvironmentFault(WorkerError):
    """Disk full, an I/O error or another fault of the machine: retried later, with backoff."""

    retryable = True
    code = "environment_error"


def classify(err: BaseException) -> WorkerError:
    """The worker error ``err`` stands for (``err`` itself when it already is one)."""
    if isinstance(err, WorkerError):
        return err
    if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
        return EnvironmentFault(f"{type(err).__name__}: {err.strerror or err}")
    if _names_environment_errno(str(err)):  # e.g. safetensors' Rust writer: a plain Exception
        return EnvironmentFault(f"{type(err).__name__}: {err}")
    if isinstance(err, MemoryError):
        return JobFailed("out_of_memory", "The job ran out of memory; try a smaller batch_size.")
    if type(err).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return JobFailed("out_of_memory", "The GPU ran out of memory; try a smaller batch_size.")
    return JobFailed("training_error", f"Training failed: {type(err).__name__}: {err}")


def _names_environment_errno(text: str) -> bool:
    return any(
        f"(os error {code})" in text or os.strerror(code) in text for code in ENVIRONMENT_ERRNOS
    )
