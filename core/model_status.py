"""Model-row statuses and the one function that changes them (as ``core.jobs`` does for jobs).

A model is ``pending`` (being prepared or aligned: jobs served by it wait), ``ready`` (servable)
or ``error`` (hidden; no job waits for it). Every status change goes through
``set_model_status`` so the allowed values and the rule for a released alignment live in one
place.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from core.models import Model

log = logging.getLogger(__name__)


class ModelStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    ERROR = "error"


def set_model_status(row: Model, status: ModelStatus | str) -> bool:
    """Set ``row.status``; returns whether it changed. Raises ``ValueError`` for a value that is
    no model status."""
    new = ModelStatus(status)
    if row.status == new:
        return False
    log.info("model %s: %s -> %s", row.id, row.status, new)
    row.status = new
    return True


def release_pending(row: Model) -> bool:
    """An alignment that will not register its model (failed, cancelled): the row goes back to
    ``ready`` when it still has the adapter of an earlier alignment, else to ``error``."""
    if row.status != ModelStatus.PENDING:
        return False
    return set_model_status(row, ModelStatus.READY if row.adapter_path else ModelStatus.ERROR)
