"""Upload screening (``TASK_SCREEN_FILE``): score every line of a training file before training.

The score is Antibody's own (``defense.screening.score_examples``): mean-token log-probability of
the line's completion minus that of its assigned refusal, under the pre-aligned model serving
``settings.default_model`` (or that base model when no aligned one is ready). A line scoring below
``settings.screen_threshold`` is flagged. The file stays usable whatever the outcome.

Choices where the contract is silent:

* A line with several trained assistant turns gets the *lowest* of its turns' scores: one harmful
  turn is enough to flag a conversation (training flags use the mean; screening is a filter).
* Example indices, and so the refusal each example is compared with, are the ones a fine-tuning
  run on this file uses (``worker.examples.training_set``): the score is the one the defense's
  first step would weight the line by.
* ``flagged`` lists the flagged lines in file order (as the API documents it), at most
  ``MAX_LISTED`` of them (the lowest scores when there are more); ``summary.flagged`` counts
  them all.
* Bounded work (screening runs on its own queue, ``core.queue.SCREENING_QUEUE``, and must
  neither hold a worker for hours nor its memory): at most ``max_screening_lines`` lines, the
  first ones, are read and scored (``summary.truncated`` when the file has more); scoring goes
  in slices of ``SCREEN_SLICE`` examples in file order, and stops at the first slice boundary
  after ``screening_time_limit_s`` (counted from the start, model loading included) with the
  lines fully scored so far (``summary.partial``; ``summary.lines`` counts them). A line is
  reported only when all of its turns were scored.
* The claim is ``safety_status`` queued -> running (``core.screening``: one conditional UPDATE),
  so a duplicate message does nothing. The screening worker heartbeats the file; the sweeper
  puts a file whose worker went silent back to ``queued`` and sends it again, up to
  ``screening_max_attempts`` claims, then marks it ``failed``. A preempted worker hands the file
  back at once.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import screening
from core.config import Settings
from core.datasets import DatasetLimits, Messages, iter_examples
from core.db import session_factory, session_scope
from core.models import File
from core.policy import resolve_served_model
from core.screening import ScreeningStatus
from core.storage import ArtifactStore, file_key
from worker import preemption
from worker.errors import TRANSIENT_ERRORS, ClaimLost, JobFailed, Preempted, classify
from worker.models import load_model, locate_model, resolve_device

log = logging.getLogger(__name__)

MAX_LISTED = 1000
SCORE_BATCH_SIZE = 8
SCREEN_SLICE = 64  # examples scored between two looks at the clock


def screening_model(session: Session, *, settings: Settings) -> str:
    """The pre-aligned model serving the default model, else the default model itself."""
    served = resolve_served_model(session, model_id=settings.default_model, settings=settings)
    return settings.default_model if served.waiting_for else served.model_id


def build_report(
    line_numbers: list[int], scores: list[float], *, model: str, threshold: float
) -> dict[str, Any]:
    by_line: dict[int, float] = {}
    for line, score in zip(line_numbers, scores, strict=True):
        by_line[line] = min(score, by_line.get(line, score))
    low = sorted((score, line) for line, score in by_line.items() if score < threshold)
    mean = sum(by_line.values()) / len(by_line) if by_line else 0.0
    return {
        "model": model,
        "threshold": threshold,
        "summary": {"lines": len(by_line), "flagged": len(low), "mean_score": round(mean, 6)},
        "flagged": [
            {
                "line": line,
                "score": round(score, 6),
                "reason": f"likelihood ratio {score:.3f} < threshold {threshold:.3f}: {model} "
                "prefers refusing this prompt to giving this completion",
            }
            for score, line in sorted(low[:MAX_LISTED], key=lambda item: item[1])
        ],
        "scored_at": int(time.time()),
    }


def screen_file(
    file_id: str,
    *,
    settings: Settings,
    worker_id: str = "local",
    send_again: Callable[[str], object] | None = None,
) -> dict[str, Any] | None:
    """Screen one file; returns its report, or ``None`` when there was nothing to claim (or the
    screening was handed back: preempted, or lost to another worker)."""
    factory = session_factory(settings.resolved_database_url)
    with session_scope(factory) as session:
        claimed = screening.claim(session, file_id, worker_id)
    if not claimed:
        log.info("file %s: not queued for screening (duplicate or done); skipping", file_id)
        return None
    model_id = None
    lease = _Lease(factory, file_id, worker_id, interval_s=settings.heartbeat_interval_s)
    try:
        with lease.alive():
            with session_scope(factory) as session:
                row = session.execute(select(File).where(File.id == file_id)).scalar_one()
                if row.deleted_at is not None:
                    raise JobFailed("file_deleted", "the file was deleted before it was screened")
                key = row.storage_key or file_key(row.id)
                model_id = screening_model(session, settings=settings)
            report = _score(key, model_id=model_id, settings=settings)
    except ClaimLost:
        log.warning("file %s: screening taken over by another worker; stopped", file_id)
        return None
    except Preempted:
        _finish(factory, file_id, worker_id, ScreeningStatus.QUEUED, None)
        if send_again is not None:
            send_again(file_id)
        return None
    except Exception as err:  # noqa: BLE001 - recorded on the file; the file stays usable
        if isinstance(err, TRANSIENT_ERRORS):
            _finish(factory, file_id, worker_id, ScreeningStatus.QUEUED, None)
            raise
        log.exception("file %s: screening failed", file_id)
        failed = {"model": model_id, "error": f"Screening failed: {classify(err).message}"}
        _finish(factory, file_id, worker_id, ScreeningStatus.FAILED, failed)
        return failed
    _finish(factory, file_id, worker_id, ScreeningStatus.COMPLETED, report)
    return report


class _Lease:
    """The screening's heartbeat thread and its stop check (``defense.progress.tick``)."""

    def __init__(
        self, factory: sessionmaker[Session], file_id: str, worker_id: str, *, interval_s: float
    ) -> None:
        self.factory, self.file_id, self.worker_id = factory, file_id, worker_id
        self.interval_s = interval_s
        self.lost = False

    @contextmanager
    def alive(self) -> Iterator[None]:
        from defense.progress import ticking

        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.interval_s):
                try:
                    with session_scope(self.factory) as session:
                        self.lost = not screening.heartbeat(session, self.file_id, self.worker_id)
                except TRANSIENT_ERRORS:
                    log.warning("file %s: heartbeat failed; retrying", self.file_id)

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.file_id}", daemon=True)
        thread.start()
        try:
            with ticking(self.tick):
                yield
        finally:
            done.set()
            thread.join(timeout=max(5.0, 2 * self.interval_s))

    def tick(self) -> None:
        if preemption.requested():
            raise Preempted("the worker is shutting down")
        if self.lost:
            raise ClaimLost(f"file {self.file_id} is no longer this worker's")


def first_lines(
    lines: Iterator[tuple[int, Messages]], limit: int
) -> tuple[list[tuple[int, Messages]], bool]:
    """The first ``limit`` accepted lines, and whether there were more (nothing more is read)."""
    kept = list(itertools.islice(lines, limit))
    more = next(lines, None) is not None
    close = getattr(lines, "close", None)
    if close is not None:
        close()  # a generator over the stored file: close it now
    return kept, more


def _score(
    key: str,
    *,
    model_id: str,
    settings: Settings,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    import torch

    from defense.screening import score_examples
    from worker.examples import training_set

    started = clock()
    if settings.worker_threads:
        torch.set_num_threads(settings.worker_threads)
    store = ArtifactStore(settings.resolved_artifacts_dir)
    limits = DatasetLimits.from_settings(settings)
    lines, truncated = first_lines(
        iter_examples(store.read_stream(key), limits), settings.max_screening_lines
    )
    data = training_set(
        lines, max_seq_len=settings.max_seq_len, max_trained_turns=settings.max_trained_turns
    )
    del lines
    source = locate_model(model_id, settings=settings)
    model, tokenizer = load_model(source, trainable=False, device=resolve_device(settings.device))
    scores: list[float] = []
    partial = False
    for start in range(0, len(data.examples), SCREEN_SLICE):
        if clock() - started > settings.screening_time_limit_s:
            partial = True
            break
        scores += score_examples(
            model,
            tokenizer,
            data.examples[start : start + SCREEN_SLICE],
            batch_size=SCORE_BATCH_SIZE,
            max_seq_len=settings.max_seq_len,
            first_index=start,
        )
    numbers = data.line_numbers[: len(scores)]
    if partial and numbers and len(scores) < len(data.line_numbers):
        # Only whole lines: drop the last one if some of its turns were not scored.
        if data.line_numbers[len(scores)] == numbers[-1]:
            cut = numbers.index(numbers[-1])
            numbers, scores = numbers[:cut], scores[:cut]
    report = build_report(numbers, scores, model=model_id, threshold=settings.screen_threshold)
    report["summary"].update(truncated=truncated, partial=partial)
    report["limits"] = {
        "max_screening_lines": settings.max_screening_lines,
        "screening_time_limit_s": settings.screening_time_limit_s,
    }
    report["aligned"] = source.is_aligned
    return report


def _finish(
    factory: sessionmaker[Session],
    file_id: str,
    worker_id: str,
    status: ScreeningStatus,
    report: dict[str, Any] | None,
) -> None:
    with session_scope(factory) as session:
        screening.finish(session, file_id, worker_id, status=status, report=report)
