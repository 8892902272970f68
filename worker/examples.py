"""Training examples from a validated JSONL file, with the line each one came from."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from defense.data import Example

_TRAINABLE_ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class TrainingSet:
    examples: list[Example]
    line_numbers: list[int]  # line_numbers[i] is the file line of examples[i]


def _clean(message: dict[str, Any]) -> dict[str, str]:
    role = message["role"] if message["role"] in _TRAINABLE_ROLES else "user"
    return {"role": role, "content": str(message.get("content") or "")}


def training_set(lines: Iterable[tuple[int, list[dict[str, Any]]]]) -> TrainingSet:
    """One example per trained assistant turn.

    OpenAI trains every assistant message whose ``weight`` is not 0; defense trains the last
    message of an ``Example``. So a conversation with k trained assistant turns becomes k
    examples, each ending at one of those turns (the earlier turns are its context).
    """
    examples: list[Example] = []
    numbers: list[int] = []
    for number, messages in lines:
        for i, message in enumerate(messages):
            if (
                message.get("role") != "assistant"
                or str(message.get("weight", "1")) == "0"
                or i == 0
            ):
                continue
            examples.append(Example(messages=tuple(_clean(m) for m in messages[: i + 1])))
            numbers.append(number)
    return TrainingSet(examples=examples, line_numbers=numbers)
