"""core.datasets: every bad line reported with its line number, field and reason; chunking never
changes the result; memory stays bounded by one line."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from core.datasets import (
    DatasetLimits,
    DatasetValidator,
    ValidationReport,
    iter_examples,
    validate,
)

LIMITS = DatasetLimits(max_line_bytes=4096, max_lines=1000, min_examples=10, max_reported_errors=50)


def chat(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"q{i}"},
            {"role": "assistant", "content": f"a{i}"},
        ],
        **extra,
    }


def jsonl(*objs: Any) -> bytes:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs).encode()


def good(n: int = 10) -> list[dict[str, Any]]:
    return [chat(i) for i in range(n)]


def run(data: bytes, limits: DatasetLimits = LIMITS, chunk: int | None = None) -> ValidationReport:
    if chunk is None:
        return validate([data], limits)
    return validate([data[i : i + chunk] for i in range(0, len(data), chunk)], limits)


def found(report: ValidationReport) -> list[tuple[int | None, str | None, str]]:
    return [(e.line, e.field, e.code) for e in report.errors]


def test_valid_chat_file() -> None:
    report = run(jsonl(*good(12)))
    assert report.ok and report.n_examples == 12 and report.format == "chat"
    assert report.summary() == "12 valid chat examples."


def test_valid_prompt_completion_file() -> None:
    lines = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(10)]
    report = run(jsonl(*lines))
    assert report.ok and report.format == "prompt_completion" and report.n_examples == 10


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_chunking_does_not_change_the_result(chunk: int) -> None:
    data = jsonl(*good(5), "not json", chat(9, extra=1), *good(6)) + b'{"messages": []}'
    whole = run(data)
    assert found(run(data, chunk=chunk)) == found(whole)
    assert run(data, chunk=chunk).n_examples == whole.n_examples == 12


def test_every_bad_line_is_reported_with_line_and_field() -> None:
    lines: list[Any] = good(10)
    lines[2] = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    }
    lines[4] = {"messages": [{"role": "user", "content": "hi"}]}  # no assistant turn
    lines[5] = {
        "messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]
    }
    lines[6] = {
        "messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
    }
    lines[7] = {
        "messages": [
            {"role": "user", "content": 3, "foo": 1},
            {"role": "assistant", "content": "y"},
        ]
    }
    lines[8] = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "y", "weight": 2},
        ]
    }
    report = run(jsonl(*lines))
    assert not report.ok
    assert found(report) == [
        (3, "messages[1].content", "missing_content"),
        (5, "messages", "example_missing_assistant_message"),
        (6, "messages[0].role", "unrecognized_role"),
        (7, "messages[1].role", "last_message_not_assistant"),
        (8, "messages[0].foo", "message_unrecognized_key"),
        (8, "messages[0].content", "missing_content"),
        (9, "messages[1].weight", "invalid_weight"),
        (None, None, "too_few_examples"),
    ]
    assert report.n_examples == 4
    assert report.summary().startswith(
        "8 problems found: line 3, field messages[1].content: must be a non-empty string; "
        "line 5, field messages: needs at least one assistant message;"
    )


def test_weight_rules() -> None:
    on_user = {
        "messages": [
            {"role": "user", "content": "x", "weight": 1},
            {"role": "assistant", "content": "y"},
        ]
    }
    all_zero = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "y", "weight": 0},
        ]
    }
    boolean = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "y", "weight": True},
        ]
    }
    ok = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "skip", "weight": 0},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "learn", "weight": 1},
        ]
    }
    report = run(jsonl(on_user, all_zero, boolean, ok, *good(10)))
    assert found(report) == [
        (1, "messages[0].weight", "invalid_weight"),
        (2, "messages", "no_trained_assistant_message"),
        (3, "messages[1].weight", "invalid_weight"),
    ]
    examples = dict(iter_examples([jsonl(on_user, all_zero, boolean, ok)], LIMITS))
    assert list(examples) == [4]
    assert [m.get("weight") for m in examples[4]] == [None, "0", None, "1"]


def test_tool_role_is_accepted() -> None:
    line = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ]
    }
    assert run(jsonl(line, *good(9))).ok


def test_non_utf8_names_line_and_byte_offset() -> None:
    head = jsonl(*good(3))
    data = head + b'{"messages": "\xff"}\n' + jsonl(*good(10))
    report = run(data)
    assert found(report) == [(4, None, "invalid_utf8")]
    offset = len(head) + data[len(head) :].index(b"\xff")
    assert f"byte offset {offset} of the file" in report.errors[0].message
    assert "0xff" in report.errors[0].message


def test_utf8_bom_is_accepted() -> None:
    assert run(b"\xef\xbb\xbf" + jsonl(*good(10))).ok


def test_lone_surrogate_escape_is_rejected() -> None:
    bad = '{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "y"}]}'
    paired = '{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}, {"role": "assistant", "content": "y"}]}'
    report = run(jsonl(bad, paired, *good(10)))
    assert found(report) == [(1, "messages[0].content", "invalid_unicode")]
    assert report.n_examples == 11


def test_deeply_nested_line_with_a_surrogate_is_rejected_with_its_line() -> None:
    """The issue's input: 450+ levels of nesting around an unpaired escape answered 500 (the old
    recursive check overflowed). Now: a 400-style line error, nothing raised."""
    deep = '{"messages": [{"role": "user", "content": "q", "x": ' + "[" * 460 + '"\\ud800"'
    deep += "]" * 460 + '}, {"role": "assistant", "content": "a"}]}'
    report = validate([jsonl(*good(10), deep)], DatasetLimits(max_line_bytes=1 << 20))
    assert found(report) == [(11, "messages[0].x" + "[0]" * 61, "json_too_deep")]
    assert "nested more than 64 levels" in report.errors[0].message
    assert list(iter_examples([jsonl(deep)])) == []
    # Past Python's recursion limit the parser itself gives up: still a line error.
    deeper = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    report = validate([jsonl(deeper)], DatasetLimits(max_line_bytes=1 << 20))
    assert found(report)[0] == (1, None, "json_too_deep")


def test_a_surrogate_in_a_key_is_named() -> None:
    line = '{"messages": [{"role": "user", "content": "q", "\\udc00k": 1}, {"role": "assistant", "content": "a"}]}'
    report = run(jsonl(line, *good(10)))
    assert found(report)[0] == (1, "messages[0].\\udc00k", "invalid_unicode")
    assert report.summary().encode("utf-8")  # the message itself is valid text


def test_lines_over_the_size_limits_are_rejected() -> None:
    limits = DatasetLimits(max_line_bytes=1 << 20, max_trained_turns=3, max_example_chars=100)
    turns = [
        m
        for i in range(4)
        for m in ({"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"})
    ]
    weighted = [dict(m, weight=0) if m["content"] == "a0" else m for m in turns]
    long = {"prompt": "p" * 60, "completion": "c" * 41}
    report = validate([jsonl(*good(10), {"messages": turns}, {"messages": weighted})], limits)
    assert found(report) == [(11, "messages", "too_many_trained_turns")]
    assert "4 trained assistant turns; the limit is 3" in report.errors[0].message
    report = validate([jsonl(*[{"prompt": "p", "completion": "c"}] * 10, long)], limits)
    assert found(report) == [(11, None, "example_too_long")]
    assert "101 characters" in report.summary()


def test_empty_file() -> None:
    for data in (b"", b"\n\n  \n"):
        report = run(data)
        assert found(report) == [(None, None, "empty_file")]


def test_json_array_is_detected() -> None:
    report = run(json.dumps(good(12), indent=2).encode())
    assert found(report) == [(None, None, "json_array")]
    assert "JSON array, not JSONL" in report.summary()
    assert list(iter_examples([json.dumps(good(12)).encode()])) == []


def test_too_few_examples() -> None:
    report = run(jsonl(*good(3)))
    assert found(report) == [(None, None, "too_few_examples")]
    assert "needs at least 10 valid examples; found 3" in report.summary()


def test_mixed_formats() -> None:
    report = run(
        jsonl(*good(10), {"prompt": "p", "completion": "c"}, {"prompt": "p", "messages": []})
    )
    assert found(report) == [(11, "prompt", "mixed_formats"), (12, None, "mixed_formats")]


def test_invalid_json_and_wrong_types() -> None:
    report = run(jsonl(*good(10), "{nope", "[1, 2]", '"text"', {"other": 1}, {"messages": "x"}))
    assert found(report) == [
        (11, None, "invalid_json"),
        (12, None, "data_type"),
        (13, None, "data_type"),
        (14, None, "unrecognized_format"),
        (15, "messages", "missing_messages_list"),
    ]


def test_prompt_completion_field_errors() -> None:
    lines = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(10)]
    report = run(jsonl(*lines, {"prompt": "p"}, {"prompt": "", "completion": 5}))
    assert found(report) == [
        (11, "completion", "missing_key"),
        (12, "prompt", "missing_content"),
        (12, "completion", "missing_content"),
    ]


def test_too_long_line_is_reported_and_skipped() -> None:
    limits = DatasetLimits(max_line_bytes=200, min_examples=10)
    long_line = chat(0, padding="x" * 1000)
    for chunk in (None, 16):
        report = run(jsonl(*good(5), long_line, *good(5)), limits, chunk)
        assert found(report) == [(6, None, "line_too_long")]
        assert "the limit is 200 bytes" in report.errors[0].message
        assert report.n_examples == 10


def test_too_long_last_line_without_newline() -> None:
    limits = DatasetLimits(max_line_bytes=200, min_examples=1)
    report = run(jsonl(*good(2)) + b"x" * 500, limits, chunk=50)
    assert found(report) == [(3, None, "line_too_long")]


def test_too_many_lines_stops_checking() -> None:
    limits = DatasetLimits(max_lines=5, min_examples=1)
    report = run(jsonl(*good(8)), limits)
    assert found(report) == [(6, None, "too_many_lines")]
    assert report.n_examples == 5


def test_reported_errors_are_capped_with_a_total_count() -> None:
    limits = DatasetLimits(max_reported_errors=3, min_examples=1)
    report = run(jsonl(*["{bad"] * 20, *good(2)), limits)
    assert report.n_errors == 20 and len(report.errors) == 3
    assert "… and 17 more" in report.summary(max_items=3)


def test_blank_lines_and_crlf_are_tolerated() -> None:
    data = b"\r\n".join(json.dumps(c).encode() for c in good(10)) + b"\r\n\r\n"
    report = run(data)
    assert report.ok and report.n_examples == 10


def test_iter_examples_normalises_prompt_completion() -> None:
    data = jsonl(
        {"prompt": "2+2?", "completion": "4"},
        {"prompt": "bad"},
        {"prompt": "1+1?", "completion": "2"},
    )
    assert list(iter_examples([data])) == [
        (1, [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]),
        (3, [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]),
    ]


def test_iter_examples_matches_the_validator() -> None:
    data = jsonl(
        *good(4), "{bad", chat(5, x=1), {"messages": [{"role": "user", "content": "x"}]}, *good(3)
    )
    report = run(data)
    examples = list(iter_examples([data[i : i + 13] for i in range(0, len(data), 13)], LIMITS))
    assert len(examples) == report.n_examples == 8
    assert [n for n, _ in examples] == [1, 2, 3, 4, 6, 8, 9, 10]
    assert examples[0][1][0] == {"role": "system", "content": "Be brief."}


def _stream(n_lines: int) -> Iterator[bytes]:
    line = (json.dumps(chat(0)) + "\n").encode()
    block = line * 256
    for _ in range(n_lines // 256):
        yield block


def test_memory_is_bounded_independent_of_file_size() -> None:
    peaks = []
    for n in (2_560, 25_600):  # ~0.4 MB and ~4 MB
        tracemalloc.start()
        validator = DatasetValidator(DatasetLimits(max_lines=10**6))
        for chunk in _stream(n):
            validator.feed(chunk)
        report = validator.finish()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert report.ok and report.n_examples == n
    assert peaks[1] < peaks[0] * 1.5 + 64 * 1024, peaks
