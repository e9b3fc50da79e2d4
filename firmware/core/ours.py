"""A ticket of ours: what Ticket Resolve (tickets.py) and Xk (xk.py) both need to know of a
MIKEY base ticket this KMS issued. One module, so the two can never drift apart (where a drift
would be a security bug: a ticket one side accepts and the other refuses, or the reverse).

Rules:
- Our tickets are MIKEY base tickets (type 1) whose THDR data names the TPK version
  (`KMS1` || u32 version); the ticket MAC is verified with that TPK version in the HSM before any
  field of the ticket is trusted.
- A ticket that names another KMS (IDRkms), or whose key version is unknown or destroyed, is not
  ours (`NotOurs`); each caller turns that into its own answer (ERR 14 for a UE, TICKET_INVALID
  for a DF2). A version the cluster's store records as existing but this HSM lacks is the
  node's fault, not the ticket's: KeyVersionUnavailable (UNAVAILABLE, alarmed by the caller).
- The validity window is [TRs, TRe] in unix seconds; a bound the ticket does not give, or gives
  as a COUNTER (no time), does not limit.
- Identities are compared in canonical form (firmware/core/identity.py); bytes that do not
  canonicalise compare as None and never match anything.
- Ticket ids are SHA-256 of the Ticket Data, first 16 bytes (stable across resolves).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from firmware.core.errors import KeyVersionNotFound, KeyVersionUnavailable, KmsError
from firmware.core.freshness import ntp64_to_unix
from firmware.core.identity import IdentityError, canonical
from firmware.core.ports import KeyName, KeyVault, Store
from firmware.mikey.codec import RoleTimestamp, Ticket, Timestamp
from firmware.mikey.constants import ErrNo, TsType
from firmware.mikey.errors import MikeyError
from firmware.mikey.message import Message
from firmware.mikey.ticket import OpenedTicket, open_ticket, peek_ticket

THDR_MAGIC = b"KMS1"
_THDR = struct.Struct("!4sI")


class NotOurs(Exception):
    """Not a valid ticket of this KMS (wrong type or THDR, MAC fails, other KMS, key gone)."""


def ticket_id(ticket_data: bytes) -> bytes:
    """Stable id of a ticket: SHA-256 of its Ticket Data, first 16 bytes."""
    return hashlib.sha256(ticket_data).digest()[:16]


def thdr_for(version: int) -> bytes:
    return _THDR.pack(THDR_MAGIC, version)


def version_from_thdr(data: bytes) -> int:
    """The TPK version named by a ticket's THDR data; MikeyError when it is not ours."""
    if len(data) != _THDR.size or data[:4] != THDR_MAGIC:
        raise MikeyError("ticket header is not this KMS's", -1, ErrNo.INVALID_TICKET)
    return int(_THDR.unpack(data)[1])


def ts_unix(tr: RoleTimestamp | Timestamp) -> float | None:
    """Unix seconds of a (role) timestamp; None for a COUNTER, which carries no time."""
    if tr.ts_type is TsType.COUNTER:
        return None
    return ntp64_to_unix(int.from_bytes(Timestamp(tr.ts_type, tr.value).as_64(), "big"))


def canonical_or_none(data: bytes) -> str | None:
    """The canonical identity of ID Data, or None when it is not a SIP/TEL URI in UTF-8."""
    try:
        return canonical(data.decode("utf-8"))
    except (UnicodeDecodeError, IdentityError):
        return None


def missing_version(store: Store, name: KeyName, version: int) -> KmsError:
    """What it means that the HSM lacks `version` of `name`: the node's fault when the store
    records it (not destroyed: another node's HSM holds it), else the caller's."""
    for record in store.key_records(name):
        if record.version == version and record.destroyed is None:
            return KeyVersionUnavailable(
                f"{name.value}/v{version} is in use in the cluster but not in this node's HSM"
            )
    return KeyVersionNotFound(f"{name.value}/v{version} does not exist")


def open_ours(msg: Message, vault: KeyVault, kms_identity: bytes, store: Store) -> OpenedTicket:
    """Verify (in the HSM) and open the TICKET payload of `msg` (its received bytes; the Ticket
    the decoder parsed is reused, never parsed again); NotOurs when it is not ours,
    KeyVersionUnavailable when its version is the cluster's but not in this HSM."""
    version = -1
    raw, decoded = msg.ticket_bytes(), msg.require(Ticket)  # a missing TICKET is malformed
    try:
        peeked = peek_ticket(raw, decoded)
        version = version_from_thdr(peeked[1].thdr.data)
        prf = peeked[0].prf_func

        def tpk(wants: Sequence[tuple[bytes, int]]) -> list[bytes]:
            return vault.ticket_prf(version, prf, wants)

        opened = open_ticket(raw, tpk, peeked=peeked)
    except MikeyError:
        raise NotOurs("not a valid ticket of this KMS") from None
    except KeyVersionNotFound:
        error = missing_version(store, KeyName.TICKET_PROTECTION, version)
        if isinstance(error, KeyVersionUnavailable):
            raise error from None
        raise NotOurs("not a valid ticket of this KMS") from None
    if opened.idr_kms is not None and opened.idr_kms != kms_identity:
        raise NotOurs("the ticket names another KMS")
    return opened


def validity(opened: OpenedTicket) -> tuple[float | None, float | None]:
    """(start, end) of the ticket's validity in unix seconds; None where it sets no bound."""
    start = ts_unix(opened.trs) if opened.trs is not None else None
    end = ts_unix(opened.tre) if opened.tre is not None else None
    return start, end


def within_validity(opened: OpenedTicket, now: float) -> bool:
    return in_window(*validity(opened), now)


def in_window(start: float | None, end: float | None, now: float) -> bool:
    """`now` in [start, end], both bounds inclusive (RFC 6043 5.1.1); None is unbounded."""
    return not ((start is not None and now < start) or (end is not None and now > end))


def allowed_responders(opened: OpenedTicket) -> set[str]:
    """The canonical identities the ticket allows as responder (IDRr); unparseable ones drop."""
    return {c for c in (canonical_or_none(r) for r in opened.idr_r) if c is not None}
