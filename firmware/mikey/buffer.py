"""The codec's bounds-checked reader and its writer-side checks (aioquic's buffer.py beside
packet.py is the model: the byte cursor lives apart from the payload layouts).

Rules and invariants:
- ``Reader`` is a cursor over ``buf[pos:end]``; every read checks the bounds first and a failure
  raises MikeyError(message, absolute offset = ``base`` + position, ERR number), never
  struct.error or IndexError.  Hot parsers may index ``buf`` directly after one bounds check of a
  fixed-layout run; ``Reader.short`` then names the first field that is cut, exactly as the
  field-by-field reads would.
- ``Reader.budget`` is how many more payloads the payload chains read through it (and through the
  readers of nested chains, which inherit and give back the budget) may parse; a caller bounds
  the work done on input it has not authenticated yet by lowering it (message.DecodeLimits).
- ``enum_table`` builds a value -> member dict once: ``Enum.__call__`` is slow, a dict lookup is
  not; parsers look registry values up there and decide themselves what an unknown value means.
- The writer side appends to a ``bytearray``; ``check`` / ``fit_u8`` / ``len8`` / ``len16`` refuse
  (MikeyError, offset -1, ERR Unspecified) any value that could not be decoded back.
"""

from __future__ import annotations

import enum
import struct
from typing import TypeVar

from firmware.mikey.constants import ErrNo
from firmware.mikey.errors import MikeyError

E = TypeVar("E", bound=enum.IntEnum)
U16 = struct.Struct("!H")
U32 = struct.Struct("!I")
UNLIMITED = 1 << 62


class Reader:
    """Bounds-checked cursor over ``buf[pos:end]``; offsets in errors are absolute (+ ``base``).

    The hot parsers (HDR, T, RANDR, IDR, V, TP, TICKET, the chain) index ``buf`` directly after
    one bounds check for a fixed-layout run; ``short`` then names the first field that is cut,
    exactly as the field-by-field methods below would."""

    __slots__ = ("base", "budget", "buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None, base: int = 0) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end
        self.base = base
        self.budget = UNLIMITED  # payloads the chains may still parse (wire.parse_chain)

    def fail(
        self, message: str, err: ErrNo = ErrNo.UNSPECIFIED, at: int | None = None
    ) -> MikeyError:
        return MikeyError(message, self.base + (self.pos if at is None else at), err)

    def short(self, at: int, layout: tuple[tuple[str, int], ...]) -> MikeyError:
        """The truncation error for fields ``layout`` ((name, size), ...) starting at ``at``,
        which do not all fit before ``end``: it names the first field that is cut."""
        what, n = layout[-1]
        for name, size in layout[:-1]:
            if at + size > self.end:
                what, n = name, size
                break
            at += size
        have = self.end - at
        return self.fail(f"truncated {what}: need {n} byte{'s' if n != 1 else ''}, have {have}",
                         at=at)  # fmt: skip

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.end:
            raise self.fail(f"truncated {what}: need {n} bytes, have {self.end - self.pos}")

    def u8(self, what: str) -> int:
        if self.pos >= self.end:
            raise self.fail(f"truncated {what}: need 1 byte, have 0")
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def u16(self, what: str) -> int:
        p = self.pos
        if p + 2 > self.end:
            raise self.fail(f"truncated {what}: need 2 bytes, have {self.end - p}")
        self.pos = p + 2
        return (self.buf[p] << 8) | self.buf[p + 1]

    def take(self, n: int, what: str) -> bytes:
        p = self.pos
        q = p + n
        if q > self.end:
            raise self.fail(f"truncated {what}: need {n} bytes, have {self.end - p}")
        self.pos = q
        return self.buf[p:q]

    def sub(self, n: int, what: str) -> Reader:
        """A reader over the next ``n`` bytes (for SP policy parameters)."""
        self.need(n, what)
        r = Reader(self.buf, self.pos, self.pos + n, self.base)
        self.pos += n
        return r


def enum_table(cls: type[E]) -> dict[int, E]:
    """value -> member of an IntEnum, built once (a dict lookup instead of ``cls(value)``)."""
    return {m.value: m for m in cls}


# --- writer side ---------------------------------------------------------------------------------


def check(cond: bool, message: str) -> None:
    """Encode-side validation: refuse values that could not be decoded back (messages that need
    formatting are built only on failure)."""
    if not cond:
        raise MikeyError(message, -1, ErrNo.UNSPECIFIED)


def fit_u8(v: int, what: str) -> int:
    """``v`` if it fits in one byte, else MikeyError."""
    if not 0 <= v <= 0xFF:
        raise MikeyError(f"{what} does not fit in 8 bits", -1, ErrNo.UNSPECIFIED)
    return v


def len16(data: bytes, what: str) -> bytes:
    """The 2-byte length field of ``data``."""
    n = len(data)
    if n > 0xFFFF:
        raise MikeyError(f"{what} longer than 65535 bytes", -1, ErrNo.UNSPECIFIED)
    return U16.pack(n)


def len8(data: bytes, what: str) -> bytes:
    """The 1-byte length field of ``data``."""
    n = len(data)
    if n > 0xFF:
        raise MikeyError(f"{what} longer than 255 bytes", -1, ErrNo.UNSPECIFIED)
    return bytes((n,))


__all__ = ["U16", "U32", "UNLIMITED", "Reader", "check", "enum_table", "fit_u8", "len8", "len16"]
