"""Lisa's guide data in a user job: the alignment job's safe set, read from its caches only."""

from __future__ import annotations

from pathlib import Path

from core.config import Settings
from defense.attack import write_pair_cache
from defense.refusals import refusal_for
from defense.retain import retain_prompts
from worker.alignment import alignment_prompts, lisa_guide, retain_pairs_path


def _settings(tmp_path: Path) -> Settings:
    return Settings(models_dir=tmp_path, alignment_samples=3, alignment_retain_samples=4)


def _completions(guide: list) -> list[tuple[str, str]]:
    return [(ex.messages[-2]["content"], ex.messages[-1]["content"]) for ex in guide]


def test_without_an_alignment_cache_the_guide_is_the_refusals(tmp_path: Path) -> None:
    guide = lisa_guide(_settings(tmp_path), "tiny-gpt2")
    prompts = alignment_prompts(3)
    assert _completions(guide) == [(p, refusal_for(i)) for i, p in enumerate(prompts)]


def test_the_cached_retain_answers_join_the_refusals(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    answered, refused, *_ = retain_prompts(4)
    write_pair_cache(
        retain_pairs_path(settings, "tiny-gpt2"),
        {answered: "Here is a short answer.", refused: "I'm sorry, but I can't help with that."},
    )
    guide = _completions(lisa_guide(settings, "tiny-gpt2"))
    refusals = [(p, refusal_for(i)) for i, p in enumerate(alignment_prompts(3))]
    # The base model's refusal teaches nothing and prompts the cache lacks are not generated.
    assert guide == [*refusals, (answered, "Here is a short answer.")]
    # The cache is per base model: another base's guide is its refusals alone.
    assert _completions(lisa_guide(settings, "other-model")) == refusals
