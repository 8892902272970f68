"""Per-line aggregation of Antibody weights and of screening scores (pure functions)."""

from __future__ import annotations

import pytest

from worker.flagging import flag_lines, per_line
from worker.screening import build_report


def test_a_line_with_several_turns_averages_them() -> None:
    # examples 0, 1 come from line 3 (two trained turns); example 2 from line 7
    assert per_line([3, 3, 7], {0: 0.2, 1: 0.6, 2: 1.5}) == pytest.approx({3: 0.4, 7: 1.5})


def test_flags_are_below_the_threshold_lowest_first_and_capped() -> None:
    lines = [1, 2, 3, 4, 5]
    relative = {0: 0.3, 1: 1.2, 2: 0.1, 3: 0.45, 4: 0.5}
    raw = {i: r / 4 for i, r in relative.items()}
    flagged = flag_lines(lines, raw, relative, threshold=0.5, top_k=2)
    assert flagged == [
        {"line": 3, "weight": 0.025, "relative_weight": 0.1},
        {"line": 1, "weight": 0.075, "relative_weight": 0.3},
    ]
    assert [f["line"] for f in flag_lines(lines, raw, relative, threshold=0.5, top_k=50)] == [
        3,
        1,
        4,
    ]
    assert flag_lines(lines, {}, {}, threshold=0.5, top_k=5) == []


def test_screening_report_takes_a_lines_lowest_turn() -> None:
    report = build_report([1, 1, 2, 4], [0.5, -0.2, 0.3, -1.0], model="m", threshold=0.0)
    assert report["model"] == "m" and report["threshold"] == 0.0
    assert report["summary"] == {"lines": 3, "flagged": 2, "mean_score": pytest.approx(-0.3)}
    assert [(f["line"], f["score"]) for f in report["flagged"]] == [(1, -0.2), (4, -1.0)]
    assert "threshold 0.000" in report["flagged"][0]["reason"]


def test_screening_report_lists_the_lowest_when_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.screening.MAX_LISTED", 2)
    report = build_report([1, 2, 3], [-0.5, -0.9, -0.7], model="m", threshold=0.0)
    assert report["summary"]["flagged"] == 3
    assert [f["line"] for f in report["flagged"]] == [2, 3]  # the two lowest, in file order
