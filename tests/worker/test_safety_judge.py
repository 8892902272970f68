"""Stored safety scores are reused only when the same judge produced them."""

from __future__ import annotations

from worker.safety import EvalSizes

SIZES = {"n_harmful": 40, "n_benign": 30, "max_new_tokens": 48}


def test_scores_from_another_judge_are_not_reused() -> None:
    learned = EvalSizes(harmful=40, benign=30, max_new_tokens=48, judge="minilm-logistic")
    keyword = EvalSizes(harmful=40, benign=30, max_new_tokens=48, judge="keyword")
    stored_learned = {"harmful_score": 0.1, **SIZES, "judge": "minilm-logistic"}
    stored_before_judges = {"harmful_score": 0.1, **SIZES}  # written by the keyword judge

    assert learned.matches(stored_learned)
    assert not learned.matches(stored_before_judges)
    assert keyword.matches(stored_before_judges)
    assert not keyword.matches(stored_learned)
