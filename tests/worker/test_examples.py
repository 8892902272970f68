from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from typing import Any

from core.datasets import DatasetLimits, iter_examples, validate
from defense.data import CHARS_PER_TOKEN_BOUND, EncodedExample, Example, encode_example
from tests.defense.conftest import char_tokenizer
from worker.examples import TrainingSet, training_set


def jsonl_bytes(objs: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(o) + "\n" for o in objs).encode()


def test_every_trained_assistant_turn_is_an_example() -> None:
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "weight": "0"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    data = training_set([(7, conversation), (8, conversation[:3] + conversation[3:5])])
    assert [e.completion for e in data.examples] == ["4", "6", "4"]
    assert data.line_numbers == [7, 7, 8]
    assert data.examples[1].messages[:-1][-1] == {"role": "user", "content": "3+3?"}
    assert all("weight" not in m for e in data.examples for m in e.messages)


# --- bounded memory: the inputs ------------------------------------------------------------


def long_chat(target_bytes: int, seed: int = 0) -> dict[str, Any]:
    """A chat of many short turns, ``target_bytes`` of JSON (the issue's shape)."""
    messages: list[dict[str, str]] = []
    size, i = 20, 0
    while size < target_bytes:
        role = "user" if i % 2 == 0 else "assistant"
        text = f"turn {i} of chat {seed}: " + "lorem ipsum dolor sit amet " * 2
        messages.append({"role": role, "content": text})
        size += len(json.dumps(messages[-1])) + 2
        i += 1
    if messages[-1]["role"] != "assistant":
        messages.append({"role": "assistant", "content": "end"})
    return {"messages": messages}


def peak_mib(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_a_143_kib_line_of_many_turns_is_bounded() -> None:
    """The issue's line: 143 KiB, ~670 trained turns. The old expansion copied the prefix for every
    turn (82 MiB of Python objects here, 734 MiB in a worker); now each example keeps a context
    window of at most max_seq_len * CHARS_PER_TOKEN_BOUND characters."""
    line = long_chat(143 * 1024)
    assert 143 * 1024 <= len(json.dumps(line)) < 145 * 1024
    data: list[TrainingSet] = []
    peak = peak_mib(lambda: data.append(training_set([(1, line["messages"])], max_seq_len=512)))
    examples = data[0].examples
    assert len(examples) == len(line["messages"]) // 2
    assert peak < 8, f"building the examples of one 143 KiB line peaked at {peak:.1f} MiB"
    budget = 512 * CHARS_PER_TOKEN_BOUND
    for example in examples:
        assert sum(len(m["content"]) for m in example.prompt_messages) <= budget
    assert examples[-1].messages[-1] is not line["messages"][-1]  # cleaned, not the input's
    # The context ends right before the trained turn, as before.
    assert examples[-1].prompt_messages[-1]["content"] == line["messages"][-2]["content"]
    # Upload validation rejects it at the default limits, naming the line.
    report = validate([jsonl_bytes([line])], DatasetLimits())
    assert [(e.line, e.field, e.code) for e in report.errors][0] == (
        1,
        "messages",
        "too_many_trained_turns",
    )


def test_a_769_kib_file_of_10_long_chats_is_bounded() -> None:
    """The issue's file: 10 long chats, 769 KiB, that held a worker at 2.5 GB for minutes (old
    code: ~170 MiB of Python objects for the examples alone)."""
    chats = [long_chat(769 * 1024 // 10, seed=i) for i in range(10)]
    data = jsonl_bytes(chats)
    assert 760 * 1024 <= len(data) <= 780 * 1024
    limits = DatasetLimits(max_trained_turns=10_000, min_examples=1)  # an old, unchecked file
    built: list[TrainingSet] = []
    peak = peak_mib(
        lambda: built.append(training_set(iter_examples([data], limits), max_seq_len=512))
    )
    assert len(built[0].examples) == sum(len(c["messages"]) // 2 for c in chats)
    assert peak < 32, f"building the examples of a 769 KiB file peaked at {peak:.1f} MiB"
    # With FTAAS_MAX_TRAINED_TURNS the worker expands at most that many turns per line.
    capped = training_set(iter_examples([data], limits), max_trained_turns=8)
    assert len(capped.examples) == 80
    assert capped.examples[7].completion == chats[0]["messages"][-1]["content"]


def test_encoding_tokenises_a_bounded_prefix() -> None:
    """A 2 MB completion is cut before it is tokenised (and so gets no EOS)."""
    tokenizer = char_tokenizer()
    example = Example.from_prompt_completion("q" * 2_000_000, "a" * 2_000_000)
    encoded: list[EncodedExample] = []
    peak = peak_mib(lambda: encoded.append(encode_example(tokenizer, example, 64)))
    assert len(encoded[0].input_ids) == 64
    assert encoded[0].labels[-1] != tokenizer.eos_token_id
    assert peak < 12, f"encoding peaked at {peak:.1f} MiB"
