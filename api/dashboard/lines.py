"""Reading given lines of an uploaded JSONL file from the artifact store (for the flagged
lines a reviewer reads). Lines are 1-based, as in every line number the service reports."""

from __future__ import annotations

from collections.abc import Iterable

from core.storage import ArtifactStore

MAX_CHARS = 4000


def read_lines(store: ArtifactStore, key: str, wanted: Iterable[int]) -> dict[int, str]:
    """{line: text} for the wanted lines that exist, each cut to ``MAX_CHARS`` characters.
    Reads the file once, stopping after the last wanted line; a missing file gives {}."""
    targets = set(wanted)
    if not targets:
        return {}
    last = max(targets)
    found: dict[int, str] = {}
    try:
        with open(store.path(key), "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if number in targets:
                    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                    found[number] = text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + " …"
                if number >= last:
                    break
    except (OSError, ValueError):
        return {}
    return found
