"""bench/defense.py's tuning record: reruns with the same settings merge, others stay apart."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.defense import AntibodyParams, Sizes, tuning_record


def row(method: str, p: float | None, harmful: float) -> dict[str, Any]:
    stage = "finetuned" if p is not None else "aligned"
    return {
        "method": method,
        "p": p,
        "stage": stage,
        "harmful_score": harmful,
        "over_refusal": 0.1,
        "task_accuracy": 0.3,
    }


DEFAULT_SIZES = Sizes()


def record(
    path: Path, rows: list[dict[str, Any]], sizes: Sizes = DEFAULT_SIZES
) -> list[dict[str, Any]]:
    ctx = SimpleNamespace(antibody=AntibodyParams(), sizes=sizes, rows=rows)
    tuning_record(ctx, path)  # type: ignore[arg-type]
    return list(json.loads(path.read_text()))


def cells(run: dict[str, Any]) -> list[tuple[str, Any, float]]:
    return [(r["method"], r["p"], r["harmful_score"]) for r in run["rows"]]


def test_a_rerun_with_the_same_settings_adds_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "tuning.json"
    record(path, [row("sft", 0.2, 0.5), row("sft", 0.0, 0.1)])
    runs = record(path, [row("antibody", 0.2, 0.05), row("sft", 0.2, 0.4)])

    assert len(runs) == 1
    assert cells(runs[0]) == [("sft", 0.0, 0.1), ("sft", 0.2, 0.4), ("antibody", 0.2, 0.05)]
    assert "Run 1" in path.with_suffix(".md").read_text()


def test_other_settings_are_another_run(tmp_path: Path) -> None:
    path = tmp_path / "tuning.json"
    record(path, [row("sft", 0.2, 0.5)])
    runs = record(
        path, [row("sft", 0.2, 0.3)], replace(Sizes(), align_steps=Sizes().align_steps + 15)
    )

    assert [cells(r) for r in runs] == [[("sft", 0.2, 0.5)], [("sft", 0.2, 0.3)]]
    runs = record(path, [row("sft", 0.0, 0.1)])  # back to the first settings
    assert [cells(r) for r in runs] == [[("sft", 0.0, 0.1), ("sft", 0.2, 0.5)], [("sft", 0.2, 0.3)]]
    text = path.with_suffix(".md").read_text()
    assert "## Run 2" in text and f"'align_steps': {Sizes().align_steps + 15}" in text


def test_a_run_recorded_before_perturbed_retain_merges_with_the_default(tmp_path: Path) -> None:
    """Runs recorded before the option existed ran without it (0): a rerun at the defaults
    extends them instead of starting a new run."""
    path = tmp_path / "tuning.json"
    old = record(path, [row("sft", 0.2, 0.5)])
    del old[0]["antibody"]["perturbed_retain"]
    path.write_text(json.dumps(old))
    runs = record(path, [row("sft", 0.0, 0.1)])
    assert [cells(r) for r in runs] == [[("sft", 0.0, 0.1), ("sft", 0.2, 0.5)]]
    other = record(path, [row("sft", 0.0, 0.2)], replace(Sizes(), align_steps=1))
    assert len(other) == 2
