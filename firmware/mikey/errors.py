"""The codec's one error: MikeyError.

Rules (h11's contract): any input either decodes or raises MikeyError; struct.error, IndexError,
ValueError, KeyError and friends never escape the codec.  Every MikeyError carries:
- ``offset``: where in the top-level input the problem was found (-1 when not about a position,
  e.g. a MAC mismatch);
- ``err``: the ERR number (RFC 3830 6.12 / RFC 6043 6.9) to answer with in a MIKEY Error message.
Messages name the problem, never key material.
"""

from __future__ import annotations

from firmware.mikey.constants import ErrNo


class MikeyError(Exception):
    """A MIKEY message (or a part of one) was refused."""

    def __init__(self, message: str, offset: int = -1, err: ErrNo = ErrNo.UNSPECIFIED) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.err = err

    def __str__(self) -> str:
        where = f" at offset {self.offset}" if self.offset >= 0 else ""
        return f"{self.message}{where} (ERR {self.err.value} {self.err.name})"

    def __repr__(self) -> str:
        return f"MikeyError({self.message!r}, offset={self.offset}, err={self.err.name})"
