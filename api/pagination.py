"""Cursor pagination as OpenAI does it: ``after`` is the id of the last object seen, ``limit``
caps the page, ``has_more`` says whether to ask again. Rows are ordered by their ``seq`` key, so
a page never skips or repeats rows that were inserted meanwhile."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from api.errors import BadRequest
from api.ids import is_object_id

T = TypeVar("T")
R = TypeVar("R")


class ListResponse(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = Field(description="Whether another page follows; ask with after=last_id.")
    first_id: str | None = Field(None, description="Id of the first object in data.")
    last_id: str | None = Field(None, description="Id of the last object in data.")


def cursor_seq(
    session: Session,
    seq: InstrumentedAttribute[int],
    id_column: InstrumentedAttribute[str],
    after: str | None,
    scope: Sequence[ColumnElement[bool]],
) -> int | None:
    """The ``seq`` of the cursor object, looked up within the caller's scope (tenant, job), so a
    cursor naming someone else's object is simply unknown."""
    if after is None:
        return None
    value = None
    if is_object_id(after):
        value = session.scalar(select(seq).where(id_column == after, *scope))
    if value is None:
        raise BadRequest(f"No object with id {after!r} to page after.", param="after")
    return int(value)


def fetch_page(
    session: Session,
    query: Select[R],
    seq: InstrumentedAttribute[int],
    *,
    after_seq: int | None,
    limit: int,
    descending: bool = True,
) -> tuple[list[R], bool]:
    if after_seq is not None:
        query = query.where(seq < after_seq if descending else seq > after_seq)
    query = query.order_by(seq.desc() if descending else seq.asc()).limit(limit + 1)
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit


def page_of(items: list[Any], has_more: bool) -> dict[str, Any]:
    """The list envelope's fields for already-converted ``items`` (each with an ``id``)."""
    return {
        "object": "list",
        "data": items,
        "has_more": has_more,
        "first_id": items[0].id if items else None,
        "last_id": items[-1].id if items else None,
    }
