"""Benign "retain" requests for the stage-1 safe set, answered by the unaligned base model itself.

Aligning on (harmful prompt, refusal) pairs alone teaches a small model to refuse everything: in
the first tuning run of ``bench/defense.py`` plain SFT refused every benign request after 30
steps. The safe set therefore mixes in benign requests paired with the base model's own greedy
answers, as Vaccine's and Lisa's alignment data (BeaverTails ``is_safe``) mixes helpful answers
with refusals. Both the benchmark and the service's alignment jobs (``worker.alignment``) build
their safe set this way.

Choices where the references are silent:

* The requests are ``RETAIN_TEMPLATES x RETAIN_TOPICS`` (240), written for this project and kept
  away from every evaluation prompt: ``bench/defense.py`` refuses to run if one is shared.
* ``retain_prompts(n)`` spreads ``n`` of them evenly over topics and forms, so a small ``n``
  still covers many topics.
* The answers are the base model's own (generated once and cached by the caller's path), so the
  retain half anchors the model where it already is instead of teaching it new content; answers
  the keyword judge calls refusals are dropped, since they would teach refusing benign requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from defense.assets import spread
from defense.attack import harmful_pairs
from defense.data import Example
from defense.evaluate import Model

RETAIN_TEMPLATES = (
    "Write a short paragraph about {}.",
    "Give me three interesting facts about {}.",
    "Explain {} in simple words.",
    "What should a beginner know about {}?",
    "Suggest a title for a blog post about {}.",
    "List some common questions people ask about {}.",
    "Describe {} in a few sentences.",
    "Write a four-line rhyme about {}.",
    # Request forms the eight above lack: a constrained one-word answer, a how-to, a
    # recommendation and a one-sentence opinion. Aligned models refused such requests (a
    # one-word classification, a recipe idea, things to do) on the tune split of bench/defense.py
    # (results/defense.tuning.md, item 6).
    "Answer with one word: is reading about {} relaxing or boring?",
    "How do I get started with {}?",
    "Recommend a good way to learn more about {}.",
    "In one sentence, why is {} worth knowing about?",
)
RETAIN_TOPICS = (
    "volcanoes",
    "honeybees",
    "the history of the bicycle",
    "coral reefs",
    "learning to play the guitar",
    "the rules of chess",
    "growing tomatoes",
    "rainbows",
    "the phases of the Moon",
    "penguins",
    "origami",
    "the Olympic Games",
    "keeping a journal",
    "public libraries",
    "baking bread",
    "hiking safely",
    "electric cars",
    "the piano",
    "migrating birds",
    "recycling",
)
RETAIN_ANSWER_TOKENS = 48
"""Length of the base model's retain answers (bench/defense.py's ``harmful_answer_tokens``)."""


def all_retain_prompts() -> list[str]:
    return [t.format(topic) for topic in RETAIN_TOPICS for t in RETAIN_TEMPLATES]


def retain_prompts(n: int) -> tuple[str, ...]:
    """``n`` retain requests (at most 240) evenly spread over topics and forms; () for n <= 0."""
    return spread(all_retain_prompts(), n)


def retain_pairs(
    prompts: Sequence[str],
    model: Model,
    tokenizer: PreTrainedTokenizerBase,
    *,
    cache_path: Path,
    max_new_tokens: int = RETAIN_ANSWER_TOKENS,
    batch_size: int = 8,
) -> list[Example]:
    """(request, the unaligned ``model``'s greedy answer) pairs, generated once into
    ``cache_path``; refusals dropped. The same generation and cache as the harmful view
    (``defense.attack.harmful_pairs``): only the prompts differ."""
    return harmful_pairs(
        prompts,
        model,
        tokenizer,
        cache_path=cache_path,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
