"""Caps on the text fields callers give us, checked before anything is stored or written.

Rules:
- Every caller-given identifier (LIID, correlation id, target identity, user identities and
  aliases, warrant DF2 identities) is at most `MAX_FIELD_BYTES` bytes of UTF-8 and holds no
  control character (Unicode category Cc: C0, DEL, C1) and no line or paragraph separator: a
  newline in a DF2 identity must never become two identities anywhere downstream (store, audit,
  log lines).
- A violation is InvalidRequest naming the field, never echoing the value.
- `describe` makes a value safe to put into an audit record or alarm detail of a *refused*
  request (whose fields were never checked): cut to the cap and control characters escaped.
"""

from __future__ import annotations

import unicodedata

from firmware.core.errors import InvalidRequest

MAX_FIELD_BYTES = 256
_SEPARATORS = {"\u2028", "\u2029", "\u0085"}


def _bad_char(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" or c in _SEPARATORS for c in text)


def check_field(name: str, value: str, *, required: bool = False) -> str:
    """`value` when it is within the caps; InvalidRequest otherwise."""
    if required and not value:
        raise InvalidRequest(f"{name} is required")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_FIELD_BYTES:
        raise InvalidRequest(f"{name} is longer than {MAX_FIELD_BYTES} bytes")
    if _bad_char(value):
        raise InvalidRequest(f"{name} holds control characters")
    return value


def check_fields(name: str, values: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Each of `values` within the caps (named `name[i]` when refused)."""
    return tuple(check_field(f"{name}[{i}]", v) for i, v in enumerate(values))


def describe(value: str) -> str:
    """A refused request's field as it may appear in an audit record or alarm."""
    cut = value[:MAX_FIELD_BYTES]
    text = "".join(
        c if not (unicodedata.category(c) == "Cc" or c in _SEPARATORS) else f"\\x{ord(c):02x}"
        for c in cut
    )
    return text + ("..." if len(value) > MAX_FIELD_BYTES else "")
