"""Strings the database cannot store: a NUL character (Postgres text refuses it) or a lone
surrogate (no UTF-8 encoding exists). Caught where input enters, so that it is a 422 naming the
field (or a 404 for an id in the path) rather than a driver error."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(value: str) -> str | None:
    """Why ``value`` cannot be stored, or None when it can."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    char = found.group()
    what = "a NUL character" if char == "\x00" else f"a lone surrogate (U+{ord(char):04X})"
    return f"contains {what} at position {found.start()}, which cannot be stored"


def _storable(value: str) -> str:
    reason = unstorable(value)
    if reason is not None:
        raise ValueError(reason)
    return value


StoredText = Annotated[str, AfterValidator(_storable)]
"""A str that the database (and the file system) can take; pydantic names the field."""
