"""Training examples from a validated JSONL file, with the line each one came from.

Memory is linear in the conversation, whatever its shape. A conversation with k trained
assistant turns becomes k examples, but they do not each copy the conversation before them:
the messages are cleaned once and shared, and each example keeps only a context window, the
messages just before its turn up to ``max_seq_len * CHARS_PER_TOKEN_BOUND`` characters (the
earliest one cut to its end). Anything earlier would be cut by ``encode_example``'s truncation
anyway, which keeps the end of a prompt. So the work and memory per example are bounded by
``max_seq_len``, and a line by ``FTAAS_MAX_TRAINED_TURNS`` (upload validation rejects more).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from defense.data import CHARS_PER_TOKEN_BOUND, Example

_TRAINABLE_ROLES = {"system", "user", "assistant"}
DEFAULT_MAX_SEQ_LEN = 512


@dataclass(frozen=True)
class TrainingSet:
    examples: list[Example]
    line_numbers: list[int]  # line_numbers[i] is the file line of examples[i]


def _clean(message: dict[str, Any]) -> dict[str, str]:
    role = message["role"] if message["role"] in _TRAINABLE_ROLES else "user"
    return {"role": role, "content": str(message.get("content") or "")}


def _trained(messages: Sequence[dict[str, Any]]) -> list[int]:
    return [
        i
        for i, message in enumerate(messages)
        if i > 0 and message.get("role") == "assistant" and str(message.get("weight", "1")) != "0"
    ]


def _window(cleaned: Sequence[dict[str, str]], end: int, budget: int) -> tuple[dict[str, str], ...]:
    """The messages before ``cleaned[end]`` holding at most ``budget`` characters, then it."""
    start, used = end, 0
    while start > 0 and used < budget:
        start -= 1
        used += max(1, len(cleaned[start]["content"]))
    context = list(cleaned[start:end])
    if used > budget:  # the earliest message keeps its end only
        first = context[0]
        context[0] = {"role": first["role"], "content": first["content"][used - budget :]}
    return (*context, cleaned[end])


def training_set(
    lines: Iterable[tuple[int, list[dict[str, Any]]]],
    *,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    max_trained_turns: int | None = None,
) -> TrainingSet:
    """One example per trained assistant turn.

    OpenAI trains every assistant message whose ``weight`` is not 0; defense trains the last
    message of an ``Example``. So a conversation with k trained assistant turns becomes k
    examples, each ending at one of those turns (the earlier turns are its context, within the
    window described above). ``max_trained_turns`` keeps the last that many turns of a line (files
    validated before the limit existed; new uploads over it are rejected).
    """
    budget = max_seq_len * CHARS_PER_TOKEN_BOUND
    examples: list[Example] = []
    numbers: list[int] = []
    for number, messages in lines:
        turns = _trained(messages)
        if max_trained_turns is not None:
            turns = turns[-max_trained_turns:] if max_trained_turns > 0 else []
        if not turns:
            continue
        cleaned = [_clean(m) for m in messages[: turns[-1] + 1]]
        for i in turns:
            examples.append(Example(messages=_window(cleaned, i, budget)))
            numbers.append(number)
    return TrainingSet(examples=examples, line_numbers=numbers)
