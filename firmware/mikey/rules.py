"""Message-level rules of RFC 6043 that need no keys: which payloads each data type requires
(section 4.2), the header rules of the exchanges (4.2.1.1, 4.2.3.1, 6.1, 6.1.1) and algorithm
strength (12.1).  The KMS, Xk and the UE roles call these on a decoded message, before any key
is touched; each refusal is a MikeyError carrying the ERR to answer with and the offset.

Rules and invariants:
- ``check_required_payloads``: every payload RFC 6043 4.2 writes without brackets must be there
  (``[x]`` optional, ``{x}`` zero or more, ``(x)`` one or more), the final V or SIGN last.  The
  offset of a missing payload is where it belongs: the start of the first payload that follows
  it in the RFC's order, else the end of the message.  Payloads the RFC does not list (or in
  another place) are not checked here: "Unexpected payloads ... SHOULD be ignored".  Conditional
  payloads need the ticket's flags: RANDRr in TRANSFER_RESP with G, IDRr and RANDRkms in
  TRANSFER_RESP and RESOLVE_RESP with I (4.2.2.3, 4.2.3.5).  RFC 3830 data types, which the node
  does not serve, are refused with ERR 11 (Invalid DT, "not supported Data type").  The
  compositions are those of the initial exchanges: a CSB-updating TRANSFER_INIT (5.2) carries no
  RANDRi nor TICKET and is refused here (the node never serves CSB updates).
- No ERR number names "payload missing"; each missing payload answers with the ERR of what it
  carries: T -> Invalid TS (1), TP -> Invalid TPpar (15), TICKET -> Invalid TICKET (14), IDR ->
  Invalid ID (7), V / SIGN -> Auth failure (0), the rest (RANDR, KEMAC, PKE, ERR) -> Unspecified
  (12).
- ``check_header_rules``: Ticket Request and Ticket Resolve messages (initial and response) carry
  no crypto sessions: #CS = 0 and the Empty map; a Ticket Transfer never uses the SRTP-ID map;
  CS IDs of a GENERIC-ID map are distinct; a TRANSFER_RESP's GENERIC-ID blocks have #P = 1,
  Session Data and an SPI.  No ERR number names these: Unspecified (12).
- ``check_algorithms``: the 256-bit algorithms (PRF-HMAC-SHA-256, AES-CM-256, HMAC-SHA-256-256)
  are never mixed with weaker ones in one message (HDR PRF, TP/TICKET PRF, KEMAC Encr alg and
  MAC alg, V Auth alg; NULL is no algorithm); the HDR PRF sets the class and the first algorithm
  of the other class is refused with its own ERR: Invalid PRF (2), Invalid EA (4), Invalid MAC (3).
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware.mikey.constants import (
    DataType,
    EncrAlg,
    ErrNo,
    IdRole,
    MacAlg,
    RandRole,
)
from firmware.mikey.crypto import is_strong_encr, is_strong_mac, is_strong_prf
from firmware.mikey.errors import MikeyError
from firmware.mikey.message import Message
from firmware.mikey.payloads import (
    CertHash,
    Certificate,
    EmptyMap,
    ErrorPayload,
    GenericIdMap,
    Kemac,
    Payload,
    Pke,
    RoleIdentity,
    RoleRand,
    SecurityPolicy,
    Signature,
    SrtpIdMap,
    Ticket,
    TicketPolicy,
    Timestamp,
    TpFlags,
    Verification,
)

_HDR_NCS_AT = 8  # offset of #CS in HDR
_HDR_MAP_AT = 9  # offset of the CS ID map type in HDR
_HDR_MAP_INFO_AT = 10


@dataclass(frozen=True, slots=True)
class Slot:
    """One place in a data type's composition: a payload class (and role, for IDR / RANDR)."""

    kind: type
    role: int | None = None
    required: bool = False
    if_flags: TpFlags | None = None  # required only when the ticket has all these flags

    def holds(self, p: Payload) -> bool:
        if type(p) is not self.kind:
            return False
        return self.role is None or getattr(p, "role", None) == self.role

    @property
    def name(self) -> str:
        """The payload's name in the RFC (T, TICKET, IDRr, RANDRkms ...)."""
        if self.role is None:
            return RFC_NAMES.get(self.kind, self.kind.__name__)
        roles = IdRole if self.kind is RoleIdentity else RandRole
        return roles(self.role).name


RFC_NAMES: dict[type, str] = {
    Timestamp: "T",
    TicketPolicy: "TP",
    Ticket: "TICKET",
    Kemac: "KEMAC",
    Verification: "V",
    Signature: "SIGN",
    Pke: "PKE",
    ErrorPayload: "ERR",
    SecurityPolicy: "SP",
    Certificate: "CERT",
    CertHash: "CHASH",
}


def _r(kind: type, role: int | None = None) -> Slot:
    return Slot(kind, role, True)


def _o(kind: type, role: int | None = None) -> Slot:
    return Slot(kind, role)


_T, _V, _SIGN = _r(Timestamp), _r(Verification), _r(Signature)
_IDRI, _IDRR = _o(RoleIdentity, IdRole.IDRi), _o(RoleIdentity, IdRole.IDRr)
_IDRKMS, _IDRPSK = _o(RoleIdentity, IdRole.IDRkms), _o(RoleIdentity, IdRole.IDRpsk)
_FORK_IDRR = Slot(RoleIdentity, IdRole.IDRr, False, TpFlags.I)
_FORK_RANDRKMS = Slot(RoleRand, RandRole.RANDRkms, False, TpFlags.I)

# RFC 6043 4.2.1 (Ticket Request), 4.2.2 (Ticket Transfer), 4.2.3 (Ticket Resolve), 5.4 (Error)
COMPOSITIONS: dict[DataType, tuple[Slot, ...]] = {
    DataType.REQUEST_INIT_PSK: (_T, _r(RoleRand, RandRole.RANDRi), _IDRI, _IDRKMS,
                                _r(TicketPolicy), _IDRPSK, _V),
    DataType.REQUEST_INIT_PK: (_T, _r(RoleRand, RandRole.RANDRi), _IDRI, _o(Certificate), _IDRKMS,
                               _r(TicketPolicy), _o(CertHash), _r(Pke), _SIGN),
    DataType.REQUEST_RESP: (_T, _IDRKMS, _r(Ticket), _r(Kemac), _V),
    DataType.TRANSFER_INIT: (_T, _r(RoleRand, RandRole.RANDRi), _IDRI, _IDRR, _o(SecurityPolicy),
                             _r(Ticket), _o(Kemac), _V),
    DataType.TRANSFER_RESP: (_T, Slot(RoleRand, RandRole.RANDRr, False, TpFlags.G), _FORK_IDRR,
                             _FORK_RANDRKMS, _o(SecurityPolicy), _o(Kemac), _V),
    DataType.RESOLVE_INIT_PSK: (_T, _r(RoleRand, RandRole.RANDRr), _IDRR, _IDRKMS, _r(Ticket),
                                _IDRPSK, _V),
    DataType.RESOLVE_INIT_PK: (_T, _r(RoleRand, RandRole.RANDRr), _IDRR, _o(Certificate), _IDRKMS,
                               _r(Ticket), _o(CertHash), _r(Pke), _SIGN),
    DataType.RESOLVE_RESP: (_T, _IDRKMS, _r(Kemac), _FORK_IDRR, _FORK_RANDRKMS, _V),
    DataType.ERROR: (_T, _r(ErrorPayload), _o(SecurityPolicy)),
}  # fmt: skip

MISSING_ERR: dict[type, ErrNo] = {
    Timestamp: ErrNo.INVALID_TS,
    TicketPolicy: ErrNo.INVALID_TPPAR,
    Ticket: ErrNo.INVALID_TICKET,
    RoleIdentity: ErrNo.INVALID_ID,
    Verification: ErrNo.AUTH_FAILURE,
    Signature: ErrNo.AUTH_FAILURE,
}

_REQUEST_RESOLVE = frozenset({DataType.REQUEST_INIT_PSK, DataType.REQUEST_INIT_PK,
                              DataType.REQUEST_RESP, DataType.RESOLVE_INIT_PSK,
                              DataType.RESOLVE_INIT_PK, DataType.RESOLVE_RESP})  # fmt: skip
_TRANSFER = frozenset({DataType.TRANSFER_INIT, DataType.TRANSFER_RESP})


def _at(msg: Message, index: int) -> int:
    """Offset of payload ``index`` in the received message (its end for len(payloads))."""
    if not msg.raw:
        return -1
    return msg.offsets[index] if index < len(msg.offsets) else len(msg.raw)


def check_required_payloads(msg: Message, *, flags: TpFlags | None = None) -> None:
    """Raise MikeyError unless ``msg`` has every payload its data type requires (RFC 6043 4.2,
    5.4).  ``flags`` (the ticket's Ticket Policy flags) add the payloads G and I require in
    TRANSFER_RESP / RESOLVE_RESP; without them those are not checked."""
    slots = COMPOSITIONS.get(msg.header.data_type)
    if slots is None:
        raise MikeyError(f"data type {msg.header.data_type} has no MIKEY-TICKET composition", 1,
                         ErrNo.INVALID_DT)  # fmt: skip
    payloads = msg.payloads
    if slots[-1].kind in (Verification, Signature):
        last = slots[-1]
        if not payloads or type(payloads[-1]) is not last.kind:
            where = next((i for i, p in enumerate(payloads) if type(p) is last.kind), None)
            at = _at(msg, len(payloads) if where is None else where + 1)
            what = "missing" if where is None else "not the last payload"
            raise MikeyError(f"{last.name} {what}", at, ErrNo.AUTH_FAILURE)
        slots = slots[:-1]
        payloads = payloads[:-1]
    place = [next((n for n, s in enumerate(slots) if s.holds(p)), -1) for p in payloads]
    for n, slot in enumerate(slots):
        needed = slot.required or (
            slot.if_flags is not None
            and flags is not None
            and flags & slot.if_flags == slot.if_flags
        )
        if not needed or n in place:
            continue
        after = next((i for i, k in enumerate(place) if k > n), len(payloads))
        err = MISSING_ERR.get(slot.kind, ErrNo.UNSPECIFIED)
        raise MikeyError(f"{slot.name} payload missing", _at(msg, after), err)


def _entry_offsets(m: GenericIdMap) -> list[int]:
    out, at = [], _HDR_MAP_INFO_AT
    for e in m.entries:
        out.append(at)
        at += 3 + len(e.policy_nos) + 2 + len(e.session_data) + 1 + len(e.spi)
    return out


def check_header_rules(msg: Message) -> None:
    """Raise MikeyError when the HDR breaks a rule of its exchange (RFC 6043 4.2.1.1, 4.2.1.5,
    4.2.3.1, 4.2.3.5, 6.1, 6.1.1); see the module docstring."""
    h = msg.header
    m = h.cs_map
    if h.data_type in _REQUEST_RESOLVE:
        if not isinstance(m, EmptyMap):
            raise MikeyError("Ticket Request/Resolve messages use the Empty map", _HDR_MAP_AT,
                             ErrNo.UNSPECIFIED)  # fmt: skip
        if m.cs_count:
            raise MikeyError("Ticket Request/Resolve messages carry no crypto sessions (#CS 0)",
                             _HDR_NCS_AT, ErrNo.UNSPECIFIED)  # fmt: skip
        return
    if h.data_type not in _TRANSFER:
        return
    if isinstance(m, SrtpIdMap):
        raise MikeyError("Ticket Transfer SHALL NOT use the SRTP-ID map", _HDR_MAP_AT,
                         ErrNo.UNSPECIFIED)  # fmt: skip
    if not isinstance(m, GenericIdMap):
        return
    seen: set[int] = set()
    for at, e in zip(_entry_offsets(m), m.entries, strict=True):
        if e.cs_id in seen:
            raise MikeyError(f"CS ID {e.cs_id} appears twice in the GENERIC-ID map", at,
                             ErrNo.UNSPECIFIED)  # fmt: skip
        seen.add(e.cs_id)
        if h.data_type != DataType.TRANSFER_RESP:
            continue
        if len(e.policy_nos) != 1:
            raise MikeyError("in a response #P SHALL be exactly 1", at + 2, ErrNo.UNSPECIFIED)
        if not e.session_data or not e.spi:
            raise MikeyError("a response MUST provide Session Data and SPI for each CS",
                             at + 3 + len(e.policy_nos), ErrNo.UNSPECIFIED)  # fmt: skip


def _algorithms(msg: Message) -> list[tuple[bool, ErrNo, int, str]]:
    """(is 256-bit, ERR, offset, name) of every non-NULL algorithm the message names."""
    out = [(is_strong_prf(msg.header.prf_func), ErrNo.INVALID_PRF, 3, "HDR PRF func")]
    for i, p in enumerate(msg.payloads):
        at = _at(msg, i)
        if isinstance(p, (TicketPolicy, Ticket)):
            prf = p.prf_func if isinstance(p, TicketPolicy) else p.policy.prf_func
            out.append((is_strong_prf(prf), ErrNo.INVALID_PRF, at + 5, "Ticket Policy PRF func"))
        elif isinstance(p, Kemac):
            if p.encr_alg is not EncrAlg.NULL:
                out.append((is_strong_encr(p.encr_alg), ErrNo.INVALID_EA, at + 1, "KEMAC Encr alg"))
            if p.mac_alg is not MacAlg.NULL:
                n = at + 4 + len(p.encr_data)
                out.append((is_strong_mac(p.mac_alg), ErrNo.INVALID_MAC, n, "KEMAC MAC alg"))
        elif isinstance(p, Verification) and p.mac_alg is not MacAlg.NULL:
            out.append((is_strong_mac(p.mac_alg), ErrNo.INVALID_MAC, at + 1, "V Auth alg"))
    return out


def check_algorithms(msg: Message) -> None:
    """Raise MikeyError when the message mixes 256-bit algorithms with weaker ones (RFC 6043
    12.1: the 256-bit algorithms "SHALL NOT be mixed with algorithms using key sizes less than
    256 bits"); the HDR PRF func sets the class."""
    found = _algorithms(msg)
    strong = found[0][0]
    for is_strong, err, at, name in found[1:]:
        if is_strong != strong:
            kind = "256-bit" if is_strong else "weaker than 256-bit"
            raise MikeyError(f"{name} is {kind} but the HDR PRF func is not", at if msg.raw else -1,
                             err)  # fmt: skip


def check_message(msg: Message, *, flags: TpFlags | None = None) -> None:
    """All three: header rules, required payloads, algorithm strength."""
    check_header_rules(msg)
    check_required_payloads(msg, flags=flags)
    check_algorithms(msg)


__all__ = [
    "COMPOSITIONS",
    "MISSING_ERR",
    "Slot",
    "check_algorithms",
    "check_header_rules",
    "check_message",
    "check_required_payloads",
]
