"""defense.retain: the benign half of the safe set, spread over topics, away from evaluations."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest.mock import patch

from core.alignments import RETAIN_REQUESTS
from defense.assets import benign_prompts, normalise_prompt
from defense.retain import RETAIN_TOPICS, all_retain_prompts, retain_pairs, retain_prompts


def test_retain_prompts_are_spread_over_topics_and_capped() -> None:
    every = all_retain_prompts()
    assert len(every) == len(set(every)) == RETAIN_REQUESTS
    assert retain_prompts(0) == () and retain_prompts(-3) == ()
    assert retain_prompts(500) == tuple(every)
    few = retain_prompts(8)
    topics = {next(t for t in RETAIN_TOPICS if t in prompt) for prompt in few}
    assert len(few) == 8 and len(topics) == 8  # eight requests, eight different topics


def test_no_retain_request_is_an_over_refusal_evaluation_prompt() -> None:
    evaluated = {normalise_prompt(p) for p in benign_prompts(task_prompts=40)}
    assert not [p for p in all_retain_prompts() if normalise_prompt(p) in evaluated]


def test_retain_pairs_are_the_base_models_answers_without_refusals(tmp_path: Path) -> None:
    prompts = list(retain_prompts(3))
    replies = ["Lava is molten rock.", "I can't help with that.", "Bees."]
    answers = dict(zip(prompts, replies, strict=True))

    def fake_generate(model: Any, tokenizer: Any, batch: Any, **kwargs: Any) -> list[str]:
        assert kwargs["max_new_tokens"] == 48  # RETAIN_ANSWER_TOKENS
        return [answers[p] for p in batch]

    with patch("defense.attack.generate", fake_generate):
        pairs = retain_pairs(
            prompts,
            object(),  # type: ignore[arg-type]
            object(),  # type: ignore[arg-type]
            cache_path=tmp_path / "retain.jsonl",
        )

    assert [(e.prompt_messages[-1]["content"], e.completion) for e in pairs] == [
        (prompts[0], "Lava is molten rock."),
        (prompts[2], "Bees."),
    ]
    assert len((tmp_path / "retain.jsonl").read_text().splitlines()) == 3  # all cached
