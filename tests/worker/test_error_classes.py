"""A full disk is an environment error however the writing library reports it."""

from __future__ import annotations

import errno

from safetensors import SafetensorError

from worker.errors import EnvironmentFault, JobFailed, classify


def test_full_disk_is_retried_not_failed() -> None:
    assert isinstance(classify(OSError(errno.ENOSPC, "No space left on device")), EnvironmentFault)
    # safetensors (a model's or a checkpoint's adapter write) raises its own type on ENOSPC.
    full = SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"
    )
    assert isinstance(classify(full), EnvironmentFault)


def test_other_safetensors_errors_fail_the_job() -> None:
    error = classify(SafetensorError("Error while deserializing header: InvalidHeader"))
    assert isinstance(error, JobFailed) and error.code == "training_error"
