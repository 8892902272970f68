"""The generic refusals y_r of Antibody (spec §1.2 refusal view, §2.2 score).

``defense/data/refusals.txt`` holds 100 one-line, task-agnostic refusals written for this
project (the released code ships its own ~100-line list; we do not copy it). Assignment rule,
as in the released code: the sample at dataset index ``i`` gets line ``i mod N``. The index is
the example's position in the sequence the caller passes (the line number of the user's training
file), not its position after shuffling, so a sample keeps one refusal for the whole run, across
epochs and across a resume.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load_refusals() -> tuple[str, ...]:
    """The packaged refusal list: one refusal per non-empty line, in file order."""
    text = resources.files("defense").joinpath("data/refusals.txt").read_text(encoding="utf-8")
    refusals = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not refusals:
        raise ValueError("defense/data/refusals.txt holds no refusals")
    return refusals


def refusal_for(index: int, refusals: tuple[str, ...] | None = None) -> str:
    """The refusal assigned to the sample at dataset ``index`` (line ``index mod N``)."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    pool = load_refusals() if refusals is None else refusals
    return pool[index % len(pool)]
