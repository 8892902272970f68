"""Upload screening is bounded: at most max_screening_lines lines, and a time limit after which
the report is partial (whole lines only). tiny-gpt2, the real scoring path."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from core.config import Settings
from core.storage import ArtifactStore
from worker import screening

KEY = "files/screen-test.jsonl"


def _store(settings: Settings, n: int, turns: int) -> None:
    lines = []
    for i in range(n):
        messages = []
        for t in range(turns):
            messages += [
                {"role": "user", "content": f"Question {i}.{t}?"},
                {"role": "assistant", "content": f"Answer {i}.{t}."},
            ]
        lines.append(json.dumps({"messages": messages}))
    ArtifactStore(settings.resolved_artifacts_dir).write_stream(
        KEY, [("\n".join(lines) + "\n").encode()]
    )


def _ticks(step: float) -> Iterator[float]:
    now = 0.0
    while True:
        yield now
        now += step


@pytest.mark.parametrize("backend", ["embedded"])
def test_screening_reads_at_most_the_line_limit(service_settings: Settings) -> None:
    settings = service_settings.model_copy(update={"max_screening_lines": 5})
    _store(settings, 12, turns=1)
    report = screening._score(KEY, model_id="tiny-gpt2", settings=settings)
    assert report["summary"]["lines"] == 5
    assert report["summary"]["truncated"] is True and report["summary"]["partial"] is False
    assert all(f["line"] <= 5 for f in report["flagged"])
    assert report["limits"]["max_screening_lines"] == 5


@pytest.mark.parametrize("backend", ["embedded"])
def test_screening_stops_at_the_time_limit_with_whole_lines(
    service_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each look at the clock advances it 1 s; the limit is 2.5 s: the start, two slices, then
    the limit. With slices of 3 examples and 2 turns a line, 6 examples were scored: 3 whole
    lines (a line cut in the middle would be dropped)."""
    monkeypatch.setattr(screening, "SCREEN_SLICE", 3)
    settings = service_settings.model_copy(update={"screening_time_limit_s": 2.5})
    _store(settings, 10, turns=2)
    clock = _ticks(1.0)
    report = screening._score(
        KEY, model_id="tiny-gpt2", settings=settings, clock=lambda: next(clock)
    )
    assert report["summary"]["partial"] is True and report["summary"]["truncated"] is False
    assert report["summary"]["lines"] == 3
    # A cut in the middle of a line: slices of 5 examples, the limit after one slice.
    monkeypatch.setattr(screening, "SCREEN_SLICE", 5)
    settings = settings.model_copy(update={"screening_time_limit_s": 1.5})
    clock = _ticks(1.0)
    report = screening._score(
        KEY, model_id="tiny-gpt2", settings=settings, clock=lambda: next(clock)
    )
    assert report["summary"]["partial"] is True
    assert report["summary"]["lines"] == 2  # lines 1-2 whole; line 3 had one of two turns scored
