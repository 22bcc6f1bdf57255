"""One pagination style for every list of the API: ``?cursor=&limit=`` in, ``items``,
``next_cursor`` and ``has_more`` out.

A cursor is opaque to clients: URL-safe base64 of a small JSON document naming the list it
belongs to and the position after the last item of a page (``{"k": "jobs", "p": [created_at,
id]}``). ``next_cursor`` is given whenever a page has items, so a client can follow a list that
grows at its end (events, scores) by asking again later; ``has_more`` says whether the next page
holds items now. A cursor of one list used on another, or one this API did not issue, is a 422
naming ``cursor``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from service.errors import ValidationFailed
from service.text import unstorable

T = TypeVar("T")
R = TypeVar("R")

CURSOR_DESCRIPTION = "`next_cursor` of the previous page; omit for the first page."
LIMIT_DESCRIPTION = "Largest number of items in the page."

CursorQuery = Annotated[
    str | None, Query(description=CURSOR_DESCRIPTION, examples=["eyJrIjoiam9icyIsInAiOlsxXX0="])
]


def limit_query(default: int, maximum: int = 1000) -> Any:
    """The ``limit`` query parameter of a list endpoint."""
    return Query(ge=1, le=maximum, description=LIMIT_DESCRIPTION, examples=[default])


class Page(BaseModel, Generic[T]):
    """A page of a list, in the list's order."""

    items: list[T] = Field(description="This page's items.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the items after this page; null when the page is "
        "empty (keep the cursor you sent).",
        examples=["eyJrIjoiam9icyIsInAiOlsxXX0="],
    )
    has_more: bool = Field(description="Whether items after this page exist now.", examples=[False])


def encode_cursor(kind: str, position: Sequence[Any]) -> str:
    """The cursor of list ``kind`` at ``position`` (JSON-able values; datetimes as ISO text)."""
    values = [v.isoformat() if isinstance(v, datetime) else v for v in position]
    raw = json.dumps({"k": kind, "p": values}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(kind: str, cursor: str) -> list[Any]:
    """The position a cursor of list ``kind`` holds. Raises ValidationFailed (field ``cursor``)
    for anything else."""
    bad = ValidationFailed(f"not a cursor of the {kind} list this API issued", field="cursor")
    if unstorable(cursor):
        raise bad
    try:
        doc = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, binascii.Error, UnicodeError):
        raise bad from None
    if not isinstance(doc, dict) or doc.get("k") != kind or not isinstance(doc.get("p"), list):
        raise bad
    position: list[Any] = doc["p"]
    if any(isinstance(v, str) and unstorable(v) for v in position):
        raise bad
    return position


def keyset_position(kind: str, cursor: str | None) -> tuple[datetime, str] | None:
    """A ``(created_at, id)`` keyset position (lists newest first), or None for the first page."""
    if cursor is None:
        return None
    position = decode_cursor(kind, cursor)
    try:
        stamp, row_id = position
        if not isinstance(stamp, str) or not isinstance(row_id, str) or not row_id:
            raise ValueError
        return datetime.fromisoformat(stamp), row_id
    except ValueError:
        raise ValidationFailed(
            f"not a cursor of the {kind} list this API issued", field="cursor"
        ) from None


def int_position(kind: str, cursor: str | None, first: int) -> int:
    """An integer position (an event id, a sample index); ``first`` for the first page."""
    if cursor is None:
        return first
    position = decode_cursor(kind, cursor)
    if len(position) != 1 or type(position[0]) is not int or not -1 <= position[0] < 2**63:
        raise ValidationFailed(f"not a cursor of the {kind} list this API issued", field="cursor")
    return int(position[0])


def paginate(
    kind: str,
    rows: Sequence[R],
    limit: int,
    position: Callable[[R], Sequence[Any]],
) -> tuple[list[R], str | None, bool]:
    """Split ``rows`` (fetched with ``limit + 1``) into the page's rows, its ``next_cursor``
    and ``has_more``."""
    page = list(rows[:limit])
    more = len(rows) > limit
    nxt = encode_cursor(kind, position(page[-1])) if page else None
    return page, nxt, more
