"""SDP key-mgmt attribute helpers (RFC 4567): ``a=key-mgmt:mikey <base64 MIKEY message>``.

Rules: the protocol id is matched case-insensitively; base64 must be strict (RFC 4648, no
whitespace inside); a bad value raises MikeyError (offset = index of the line).  Both session-
and media-level attributes are returned, in document order.
"""

from __future__ import annotations

import base64
import binascii

from firmware.mikey.errors import MikeyError

_PREFIX = "a=key-mgmt:"


def find_key_mgmt(sdp: str) -> list[bytes]:
    """The decoded MIKEY messages of every ``a=key-mgmt:mikey`` line."""
    out = []
    for index, line in enumerate(sdp.splitlines()):
        line = line.strip()
        if not line.lower().startswith(_PREFIX):
            continue
        proto, _, data = line[len(_PREFIX) :].partition(" ")
        if proto.lower() != "mikey":
            continue
        try:
            out.append(base64.b64decode(data.strip(), validate=True))
        except (binascii.Error, ValueError):
            raise MikeyError("key-mgmt:mikey value is not base64", index) from None
    return out


def key_mgmt_line(message: bytes) -> str:
    """The attribute line (without line ending) carrying ``message``."""
    return f"a=key-mgmt:mikey {base64.b64encode(message).decode('ascii')}"


def add_key_mgmt(sdp: str, message: bytes) -> str:
    """Insert (or replace) the session-level key-mgmt:mikey line, before the first ``m=`` line."""
    lines = sdp.splitlines()
    first_m = next((i for i, ln in enumerate(lines) if ln.startswith("m=")), len(lines))
    session = [ln for ln in lines[:first_m] if not ln.lower().startswith(_PREFIX + "mikey")]
    media = lines[first_m:]
    session.append(key_mgmt_line(message))
    return "\r\n".join(session + media) + "\r\n"
