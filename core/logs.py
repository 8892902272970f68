"""Logging for every process: text or one JSON object per line, each record carrying the job id.

``configure_logging(settings)`` installs one handler on the root logger (``FTAAS_LOG_FORMAT`` =
``json`` or ``text``, ``FTAAS_LOG_LEVEL``). While a worker runs a job, ``job_context(job_id)``
sets a context variable that a filter copies onto every record, so each line a job causes (ours,
Celery's, a library's) can be found with ``job_id == ...`` in the log store.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from core.config import Settings

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("ftaas_job_id", default=None)

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged too.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tag every log record made inside the block with ``job_id``."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


def current_job_id() -> str | None:
    return _job_id.get()


class JobIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = _job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None),
            "process": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value if isinstance(value, (str, int, float, bool)) else repr(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(job)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None)
        record.job = f" [{job_id}]" if job_id else ""
        return super().format(record)


def configure_logging(settings: Settings) -> None:
    """One handler on the root logger (stderr), replacing any earlier one of ours."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(JobIdFilter())
    handler.set_name("ftaas")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "ftaas"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
