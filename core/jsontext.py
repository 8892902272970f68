"""JSON that can always be written and read back: no lone surrogates, bounded nesting.

Python's ``json.loads`` turns an unpaired ``\\ud800`` escape into a lone surrogate, a ``str`` that
cannot be encoded as UTF-8. Stored, such a value makes its row unreadable for every response
that renders it (the create answered 500, and so did every later list or get). So request bodies
and training lines are checked with ``find_problem`` before anything is stored, and the database's
JSON columns are written by ``dumps``, which refuses such text instead of storing it.

The walk is iterative (no recursion limit to hit, whatever the nesting) and stops at the first
problem, named by its path (``metadata.a``, ``messages[3].content``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Code = Literal["invalid_unicode", "json_too_deep"]


class UnstorableText(ValueError):
    """A value holds text that is not valid Unicode (a lone UTF-16 surrogate)."""


@dataclass(frozen=True)
class JsonProblem:
    code: Code
    path: str | None  # None: the document as a whole
    message: str


def is_valid_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(value: str) -> str:
    """``value`` with lone surrogates written as ``\\udXXX`` escapes (safe to put in a message)."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = printable(key)
    return f"{path}.{key}" if path else key


def find_problem(value: Any, *, max_depth: int, check_text: bool = True) -> JsonProblem | None:
    """The first lone surrogate (in a key or a string value) or nesting deeper than
    ``max_depth`` containers in ``value``; None when there is none."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, str):
            if check_text and not is_valid_text(node):
                return JsonProblem(
                    "invalid_unicode",
                    path or None,
                    f"{path or 'The value'} is not valid Unicode: it holds an unpaired UTF-16 "
                    "surrogate (\\ud800-\\udfff)",
                )
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > max_depth:
            return JsonProblem(
                "json_too_deep",
                path or None,
                f"JSON is nested more than {max_depth} levels deep"
                + (f" at {path}" if path else ""),
            )
        items = node.items() if isinstance(node, dict) else enumerate(node)
        children: list[tuple[Any, str, int]] = []
        for key, child in items:
            if isinstance(key, str) and check_text and not is_valid_text(key):
                return JsonProblem(
                    "invalid_unicode",
                    _join(path, key),
                    f"the key {_join(path, key)} is not valid Unicode: it holds an unpaired "
                    "UTF-16 surrogate (\\ud800-\\udfff)",
                )
            children.append((child, _join(path, key), depth + 1))
        stack.extend(reversed(children))  # document order
    return None


def dumps(value: Any) -> str:
    """The database's JSON serializer: UTF-8 text, refusing what could not be read back."""
    text = json.dumps(value, ensure_ascii=False)
    if not is_valid_text(text):
        problem = find_problem(value, max_depth=1 << 30)
        where = f" at {problem.path}" if problem and problem.path else ""
        raise UnstorableText(f"refusing to store text that is not valid Unicode{where}")
    return text
