"""A progress hook the long loops of ``defense/`` call between batches: ``tick()``.

``defense`` stays pure (no database, no worker): by default ``tick`` does nothing. A caller that
needs to interrupt long work (the worker: its job was cancelled, paused, preempted or lost) runs
it inside ``ticking(hook)``; ``hook`` may raise, and the exception ends the loop at a batch
boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

_hook: Callable[[], None] | None = None


def tick() -> None:
    """Called by every long loop between batches (generation, scoring, evaluation)."""
    if _hook is not None:
        _hook()


@contextmanager
def ticking(hook: Callable[[], None]) -> Iterator[None]:
    global _hook
    previous, _hook = _hook, hook
    try:
        yield
    finally:
        _hook = previous
