"""Training-file validation: streaming, bounded memory, every bad line reported.

A file arrives as byte chunks of any size. ``DatasetValidator.feed`` splits them into lines and
checks each line as soon as it is complete, so memory is bounded by one line (``max_line_bytes``)
plus one chunk, whatever the file size. Two formats are accepted, one per file:

- chat: ``{"messages": [{"role": ..., "content": ...}, ...]}``, following the rules of OpenAI's
  cookbook validator (``Chat_finetuning_data_prep.ipynb``), restricted to what the trainer uses;
- prompt/completion: ``{"prompt": str, "completion": str}``, normalised to a user and an
  assistant turn.

Error codes reuse the cookbook's names where one exists (``data_type``, ``missing_messages_list``,
``message_missing_key``, ``message_unrecognized_key``, ``unrecognized_role``, ``missing_content``,
``example_missing_assistant_message``). ``iter_examples`` re-reads a stored file with the same
rules and yields the accepted examples, so the worker trains on exactly what was validated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from core.config import Settings
from core.jsontext import find_problem

Format = Literal["chat", "prompt_completion"]
Messages = list[dict[str, str]]

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = ("role", "content", "name", "weight")
_ROLE_SET = frozenset(ROLES)
_MESSAGE_KEY_SET = frozenset(MESSAGE_KEYS)
_BOM = b"\xef\xbb\xbf"
# A \uD800-\uDFFF escape: the stdlib decoder turns an unpaired one into a lone surrogate, which is
# not encodable text. Only lines containing such an escape, or more brackets than the depth limit,
# pay for the walk over the parsed line (core.jsontext).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_FORMAT_NAMES = {"chat": "chat", "prompt_completion": "prompt/completion"}


@dataclass(frozen=True)
class DatasetLimits:
    max_line_bytes: int = 1024 * 1024
    max_lines: int = 100_000
    min_examples: int = 10
    max_reported_errors: int = 200
    max_trained_turns: int = 64
    max_example_chars: int = 262_144
    max_json_depth: int = 64

    @classmethod
    def from_settings(cls, settings: Settings) -> DatasetLimits:
        return cls(
            max_line_bytes=settings.max_line_bytes,
            max_lines=settings.max_lines,
            min_examples=settings.min_examples,
            max_reported_errors=settings.max_reported_errors,
            max_trained_turns=settings.max_trained_turns,
            max_example_chars=settings.max_example_chars,
            max_json_depth=settings.max_json_depth,
        )


@dataclass(frozen=True)
class LineError:
    """One problem. ``line`` is 1-based (None: about the whole file); ``field`` is a path into
    the line's JSON such as ``messages[1].content`` (None: the line as a whole)."""

    line: int | None
    field: str | None
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "code": self.code, "message": self.message}

    def describe(self) -> str:
        where = "file" if self.line is None else f"line {self.line}"
        if self.field:
            where += f", field {self.field}"
        return f"{where}: {self.message}"


@dataclass
class ValidationReport:
    bytes: int = 0
    n_lines: int = 0  # non-blank lines seen
    n_examples: int = 0  # lines that passed every check
    format: Format | None = None
    errors: list[LineError] = field(default_factory=list)  # the first max_reported_errors
    n_errors: int = 0  # all of them

    @property
    def ok(self) -> bool:
        return self.n_errors == 0

    def summary(self, max_items: int = 5) -> str:
        """A readable one-paragraph account, e.g. for a file's ``status_details``."""
        if self.ok:
            kind = _FORMAT_NAMES.get(self.format or "", "unknown")
            return f"{self.n_examples} valid {kind} examples."
        parts = [e.describe() for e in self.errors[:max_items]]
        text = "; ".join(parts)
        if self.n_errors > len(parts):
            text += f"; … and {self.n_errors - len(parts)} more"
        noun = "problem" if self.n_errors == 1 else "problems"
        return f"{self.n_errors} {noun} found: {text}."


@dataclass(frozen=True)
class _Line:
    number: int
    offset: int  # byte offset of the line's first byte in the file
    data: bytes | None  # None: the line is longer than the limit and was not kept
    length: int


class _LineSplitter:
    """Turns byte chunks into complete lines, keeping at most ``max_line_bytes`` of a line."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._pending: list[bytes] = []  # the start of an unfinished line
        self._pending_len = 0
        self._skipping = False  # inside a line already known to be too long
        self._number = 0
        self._offset = 0  # file offset of the unfinished line

    def feed(self, chunk: bytes) -> Iterator[_Line]:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                break
            yield self._complete(chunk[start:nl], nl - start)
            start = nl + 1
        self._keep(chunk[start:] if start else chunk)

    def finish(self) -> Iterator[_Line]:
        if self._pending_len or self._skipping:
            yield self._complete(b"", 0)

    def _keep(self, rest: bytes) -> None:
        if not rest:
            return
        self._pending_len += len(rest)
        if self._skipping:
            return
        if self._pending_len > self.max_line_bytes:
            self._pending.clear()
            self._skipping = True
        else:
            self._pending.append(rest)

    def _complete(self, tail: bytes, tail_len: int) -> _Line:
        self._number += 1
        length = self._pending_len + tail_len
        data: bytes | None
        if self._skipping or length > self.max_line_bytes:
            data = None
        elif self._pending:
            self._pending.append(tail)
            data = b"".join(self._pending)
        else:
            data = tail
        line = _Line(self._number, self._offset, data, length)
        self._offset += length + 1
        self._pending.clear()
        self._pending_len = 0
        self._skipping = False
        return line


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _bad_text(value: Any) -> str | None:
    """Why ``value`` is not usable training text, or None if it is."""
    if not isinstance(value, str):
        return f"must be a non-empty string, got {_type_name(value)}"
    if not value or value.isspace():
        return "must be a non-empty string"
    if "\x00" in value:
        return "must not contain NUL characters"
    return None


def _check_size(
    number: int, n_chars: int, n_trained: int, limits: DatasetLimits, errors: list[LineError]
) -> None:
    """Bounded work per line: every trained turn becomes a sample (``worker.examples``)."""
    if n_trained > limits.max_trained_turns:
        errors.append(
            LineError(
                number,
                "messages",
                "too_many_trained_turns",
                f"has {n_trained:,} trained assistant turns; the limit is "
                f"{limits.max_trained_turns:,} per example (split the conversation, or set "
                "weight 0 on turns not to train)",
            )
        )
    if n_chars > limits.max_example_chars:
        errors.append(
            LineError(
                number,
                None,
                "example_too_long",
                f"has {n_chars:,} characters of content; the limit is "
                f"{limits.max_example_chars:,} per example",
            )
        )


def _check_chat(
    number: int, obj: dict[str, Any], limits: DatasetLimits, errors: list[LineError]
) -> Messages | None:
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        errors.append(
            LineError(
                number,
                "messages",
                "missing_messages_list",
                "must be a non-empty list of messages",
            )
        )
        return None
    out: Messages = []
    n_errors = len(errors)
    n_assistant = 0
    n_trained = 0
    n_chars = 0
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            errors.append(
                LineError(
                    number, path, "data_type", f"must be an object, got {_type_name(message)}"
                )
            )
            continue
        if len(message) > 2:
            extra = [k for k in message if k not in _MESSAGE_KEY_SET]
            if extra:
                errors.append(
                    LineError(
                        number,
                        f"{path}.{extra[0]}",
                        "message_unrecognized_key",
                        f"unrecognized key {extra[0]!r} (allowed: {', '.join(MESSAGE_KEYS)})",
                    )
                )
        role: Any = message.get("role")
        if role is None:
            errors.append(LineError(number, f"{path}.role", "message_missing_key", "is required"))
        elif not isinstance(role, str) or role not in _ROLE_SET:
            errors.append(
                LineError(
                    number,
                    f"{path}.role",
                    "unrecognized_role",
                    f"must be one of {', '.join(ROLES)}; got {json.dumps(role)[:40]}",
                )
            )
        content: Any = message.get("content")
        if "content" not in message:
            errors.append(
                LineError(number, f"{path}.content", "message_missing_key", "is required")
            )
        elif (reason := _bad_text(content)) is not None:
            errors.append(LineError(number, f"{path}.content", "missing_content", reason))
        else:
            n_chars += len(content)
        if "name" in message and not isinstance(message["name"], str):
            errors.append(
                LineError(number, f"{path}.name", "invalid_name", "must be a string if given")
            )
        weight = message.get("weight")
        if "weight" in message:
            if role != "assistant":
                errors.append(
                    LineError(
                        number,
                        f"{path}.weight",
                        "invalid_weight",
                        "is only allowed on assistant messages",
                    )
                )
            elif isinstance(weight, bool) or weight not in (0, 1):
                errors.append(
                    LineError(
                        number,
                        f"{path}.weight",
                        "invalid_weight",
                        f"must be 0 or 1; got {json.dumps(weight)[:40]}",
                    )
                )
        if role == "assistant":
            n_assistant += 1
            if weight != 0:
                n_trained += 1
        normalised = {"role": role, "content": content}
        if "weight" in message:
            normalised["weight"] = "0" if weight == 0 else "1"
        out.append(normalised)
    _check_size(number, n_chars, n_trained, limits, errors)
    if n_assistant == 0:
        errors.append(
            LineError(
                number,
                "messages",
                "example_missing_assistant_message",
                "needs at least one assistant message",
            )
        )
    elif isinstance(messages[-1], dict) and messages[-1].get("role") != "assistant":
        last = len(messages) - 1
        errors.append(
            LineError(
                number,
                f"messages[{last}].role",
                "last_message_not_assistant",
                f"the last message must be an assistant turn; got {json.dumps(messages[-1].get('role'))[:40]}",
            )
        )
    elif n_trained == 0 and len(errors) == n_errors:
        errors.append(
            LineError(
                number,
                "messages",
                "no_trained_assistant_message",
                "every assistant message has weight 0, so the example teaches nothing",
            )
        )
    return out if len(errors) == n_errors else None


def _check_prompt_completion(
    number: int, obj: dict[str, Any], limits: DatasetLimits, errors: list[LineError]
) -> Messages | None:
    n_errors = len(errors)
    for key in ("prompt", "completion"):
        if key not in obj:
            errors.append(LineError(number, key, "missing_key", "is required"))
        elif (reason := _bad_text(obj[key])) is not None:
            errors.append(LineError(number, key, "missing_content", reason))
    if len(errors) != n_errors:
        return None
    _check_size(number, len(obj["prompt"]) + len(obj["completion"]), 1, limits, errors)
    if len(errors) != n_errors:
        return None
    return [
        {"role": "user", "content": obj["prompt"]},
        {"role": "assistant", "content": obj["completion"]},
    ]


def _check_line(
    line: _Line,
    text: str,
    file_format: Format | None,
    limits: DatasetLimits,
    errors: list[LineError],
) -> tuple[Format | None, Messages | None]:
    """Check one non-blank line. Returns its format (None if unrecognisable) and its normalised
    messages (None if it has any problem, which are appended to ``errors``)."""
    number = line.number
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        errors.append(
            LineError(number, None, "invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno})")
        )
        return None, None
    except RecursionError:
        errors.append(
            LineError(
                number,
                None,
                "json_too_deep",
                f"JSON is nested more than {limits.max_json_depth} levels deep",
            )
        )
        return None, None
    if not isinstance(obj, dict):
        errors.append(
            LineError(number, None, "data_type", f"must be a JSON object, got {_type_name(obj)}")
        )
        return None, None
    escaped = "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None
    if escaped or text.count("{") + text.count("[") > limits.max_json_depth:
        problem = find_problem(obj, max_depth=limits.max_json_depth, check_text=escaped)
        if problem is not None:
            errors.append(LineError(number, problem.path, problem.code, problem.message))
            return None, None
    is_chat = "messages" in obj
    is_pc = "prompt" in obj or "completion" in obj
    if is_chat and is_pc:
        errors.append(
            LineError(
                number,
                None,
                "mixed_formats",
                "has both 'messages' and 'prompt'/'completion'; use one format",
            )
        )
        return None, None
    if not is_chat and not is_pc:
        errors.append(
            LineError(
                number,
                None,
                "unrecognized_format",
                'expected a chat example {"messages": [...]} or {"prompt": ..., "completion": ...}',
            )
        )
        return None, None
    fmt: Format = "chat" if is_chat else "prompt_completion"
    if file_format is not None and fmt != file_format:
        errors.append(
            LineError(
                number,
                "messages" if is_chat else "prompt",
                "mixed_formats",
                f"is a {_FORMAT_NAMES[fmt]} example but the file's first example is "
                f"{_FORMAT_NAMES[file_format]}; use one format per file",
            )
        )
        return fmt, None
    if is_chat:
        return fmt, _check_chat(number, obj, limits, errors)
    return fmt, _check_prompt_completion(number, obj, limits, errors)


class _Checker:
    """The line-by-line state shared by the validator and ``iter_examples``."""

    def __init__(self, limits: DatasetLimits) -> None:
        self.limits = limits
        self.format: Format | None = None
        self.n_lines = 0
        self.json_array = False
        self.too_many = False

    def check(self, line: _Line, errors: list[LineError]) -> Messages | None:
        if self.json_array or self.too_many:
            return None
        data = line.data
        if data is None:
            errors.append(
                LineError(
                    line.number,
                    None,
                    "line_too_long",
                    f"is {line.length:,} bytes long; the limit is {self.limits.max_line_bytes:,} bytes",
                )
            )
            self.n_lines += 1
            return None
        if data.endswith(b"\r"):
            data = data[:-1]
        base = line.offset
        if line.number == 1 and data.startswith(_BOM):
            data = data[len(_BOM) :]  # UTF-8 with a BOM (what Azure asks for) is still UTF-8
            base += len(_BOM)
        if not data or data.isspace():
            return None  # blank lines carry nothing and are skipped
        if self.n_lines == 0 and data.lstrip().startswith(b"["):
            self.json_array = True
            errors.append(
                LineError(
                    None,
                    None,
                    "json_array",
                    "the file is a JSON array, not JSONL: write one JSON object per line "
                    "without the surrounding [ ]",
                )
            )
            return None
        self.n_lines += 1
        if self.n_lines > self.limits.max_lines:
            self.too_many = True
            errors.append(
                LineError(
                    line.number,
                    None,
                    "too_many_lines",
                    f"the file has more than {self.limits.max_lines:,} examples; "
                    "lines from here on were not checked",
                )
            )
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(
                LineError(
                    line.number,
                    None,
                    "invalid_utf8",
                    f"is not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset "
                    f"{base + exc.start} of the file (offset {base - line.offset + exc.start} in the line)",
                )
            )
            return None
        fmt, messages = _check_line(line, text, self.format, self.limits, errors)
        if self.format is None and fmt is not None:
            self.format = fmt
        return messages


class DatasetValidator:
    """Feed chunks, then ``finish()`` for the report. Memory: one line plus one chunk."""

    def __init__(self, limits: DatasetLimits | None = None) -> None:
        self.limits = limits or DatasetLimits()
        self._lines = _LineSplitter(self.limits.max_line_bytes)
        self._checker = _Checker(self.limits)
        self.report = ValidationReport()
        self._scratch: list[LineError] = []

    def feed(self, chunk: bytes) -> None:
        self.report.bytes += len(chunk)
        for line in self._lines.feed(chunk):
            self._check(line)

    def finish(self) -> ValidationReport:
        for line in self._lines.finish():
            self._check(line)
        report = self.report
        report.n_lines = self._checker.n_lines
        report.format = self._checker.format
        if self._checker.json_array:
            report.n_examples = 0
        elif report.n_lines == 0:
            self._add(LineError(None, None, "empty_file", "the file has no examples"))
        elif report.n_examples < self.limits.min_examples:
            self._add(
                LineError(
                    None,
                    None,
                    "too_few_examples",
                    f"needs at least {self.limits.min_examples} valid examples; "
                    f"found {report.n_examples}",
                )
            )
        return report

    def _check(self, line: _Line) -> None:
        scratch = self._scratch
        if self._checker.check(line, scratch) is not None:
            self.report.n_examples += 1
        if scratch:
            for error in scratch:
                self._add(error)
            scratch.clear()

    def _add(self, error: LineError) -> None:
        self.report.n_errors += 1
        if len(self.report.errors) < self.limits.max_reported_errors:
            self.report.errors.append(error)


def validate(chunks: Iterable[bytes], limits: DatasetLimits | None = None) -> ValidationReport:
    validator = DatasetValidator(limits)
    for chunk in chunks:
        validator.feed(chunk)
    return validator.finish()


def iter_examples(
    chunks: Iterable[bytes], limits: DatasetLimits | None = None
) -> Iterator[tuple[int, Messages]]:
    """Yield ``(line_number, messages)`` for every line the validator accepts.

    Messages are normalised to ``{"role", "content"}`` dicts; a prompt/completion line becomes a
    user and an assistant turn. An assistant turn that set ``weight`` carries it as the string
    ``"0"`` or ``"1"`` (``"0"``: not trained on). Lines with problems are skipped.
    """
    limits = limits or DatasetLimits()
    lines = _LineSplitter(limits.max_line_bytes)
    checker = _Checker(limits)
    errors: list[LineError] = []
    for chunk in chunks:
        for line in lines.feed(chunk):
            messages = checker.check(line, errors)
            errors.clear()
            if messages is not None:
                yield line.number, messages
    for line in lines.finish():
        messages = checker.check(line, errors)
        if messages is not None:
            yield line.number, messages
