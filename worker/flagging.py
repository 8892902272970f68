"""Training lines the defense down-weighted most, from a run's per-example Antibody weights.

``defense.finetune.fit`` reports, per dataset index (one trained assistant turn), the mean raw
weight and the mean relative weight (weight x step batch size: 1.0 = the average of its batch)
over the steps that saw it. A file line with several trained turns averages its turns (a choice:
the contract says "mean weight"; a min would flag a conversation for one bad turn). A line is
flagged when its relative weight is below ``threshold``; the ``top_k`` lowest are kept, lowest
first (ties by line number).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def per_line(line_numbers: Sequence[int], values: Mapping[int, float]) -> dict[int, float]:
    """Mean of ``values`` (keyed by example index) over the examples of each file line."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for index, value in values.items():
        line = line_numbers[index]
        sums[line] = sums.get(line, 0.0) + value
        counts[line] = counts.get(line, 0) + 1
    return {line: sums[line] / counts[line] for line in sums}


def flag_lines(
    line_numbers: Sequence[int],
    sample_weights: Mapping[int, float],
    relative_weights: Mapping[int, float],
    *,
    threshold: float,
    top_k: int,
) -> list[dict[str, Any]]:
    """``[{"line", "weight", "relative_weight"}]`` for the most down-weighted lines."""
    relative = per_line(line_numbers, relative_weights)
    raw = per_line(line_numbers, sample_weights)
    low = sorted((value, line) for line, value in relative.items() if value < threshold)
    return [
        {"line": line, "weight": round(raw[line], 6), "relative_weight": round(value, 6)}
        for value, line in low[: max(0, top_k)]
    ]
