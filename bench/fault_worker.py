"""``python -m bench.fault_worker CELERY_ARGS...``: a real Celery worker with the fault suite's
probes installed first (they are inherited by its pool processes).

- A step ledger: every optimizer step a job trains appends ``<job id> <step> <pid>`` to
  ``FTAAS_FAULT_LEDGER`` with one unbuffered ``write`` (the kernel has the line even if the
  process is killed a moment later), so the suite counts steps trained twice without trusting
  the worker's own bookkeeping.
- A slow evaluation: while ``$FTAAS_FAULT_DIR/slow_eval`` exists, the next generation pass of a
  safety evaluation first sleeps the number of seconds written in it (the file is consumed).

Production code carries no fault hooks; only this wrapper does.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def _install_ledger(path: str) -> None:
    from worker import reporting

    original = reporting.JobReporter.on_step

    def on_step(self: Any, metrics: Any) -> None:
        line = f"{self.claim.job_id} {int(metrics.step)} {os.getpid()}\n".encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        original(self, metrics)

    reporting.JobReporter.on_step = on_step  # type: ignore[method-assign]


def _install_slow_eval(fault_dir: Path) -> None:
    import defense.evaluate as evaluate

    original = evaluate.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        flag = fault_dir / "slow_eval"
        try:
            seconds = float(flag.read_text())
            flag.unlink()
        except (OSError, ValueError):
            seconds = 0.0
        if seconds:
            (fault_dir / "slow_eval.started").write_text(str(os.getpid()))
            time.sleep(seconds)
        return original(*args, **kwargs)

    evaluate.generate = generate


def install() -> None:
    ledger = os.environ.get("FTAAS_FAULT_LEDGER")
    if ledger:
        _install_ledger(ledger)
    fault_dir = os.environ.get("FTAAS_FAULT_DIR")
    if fault_dir:
        _install_slow_eval(Path(fault_dir))


def main() -> None:
    install()
    from celery.__main__ import main as celery_main

    sys.argv = ["celery", *sys.argv[1:]]
    celery_main()


if __name__ == "__main__":
    main()
