"""Shapes of the identifiers a request may carry. Checked before they reach a query, so a
malformed id (a NUL byte, 10 kB of text) is simply "not found" instead of a database error."""

from __future__ import annotations

import re

# file-…, ftjob-…, ftevent-…, ftckpt-…, org-…: a prefix and a URL-safe token.
OBJECT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Base model ids (see admin.schemas) and ft:… model names: printable ASCII, no spaces.
MODEL_NAME = re.compile(r"^[\x21-\x7e]{1,256}$")


def is_object_id(value: str) -> bool:
    return OBJECT_ID.match(value) is not None


def is_model_name(value: str) -> bool:
    return MODEL_NAME.match(value) is not None
