"""MIKEY messages: decode/encode and the MAC coverage of RFC 6043 section 5.5, Table 5.2.

Rules and invariants:
- ``decode`` keeps the received bytes (``Message.raw``) and each payload's start offset
  (``Message.offsets``); MACs are always computed over ``raw``, never over a re-encoding.
  ``raw`` and ``offsets`` take no part in equality, so decode(encode(m)) == m.
- ``decode`` is total: it returns a Message or raises MikeyError (see errors.py).
- MAC input (``mac_input``) = the received message with only the MAC bytes removed (V's Next
  Payload and Auth alg bytes stay), followed by what Table 5.2 appends; for TRANSFER_INIT the
  TICKET's Initiator Data length and Initiator Data fields are cut out (a TRANSFER_INIT without
  its mandatory TICKET has no MAC input: MikeyError(INVALID_TICKET)).
- The base ticket's V (RFC 6043 A.1) covers the TICKET payload minus its Next Payload byte, the
  Initiator Data length and data, and the MAC bytes (``ticket_mac_input``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from firmware.mikey.buffer import Reader, check
from firmware.mikey.constants import DataType, ErrNo, IdRole, PayloadType, RandRole
from firmware.mikey.errors import MikeyError
from firmware.mikey.payloads import (
    Header,
    Payload,
    RoleIdentity,
    RoleRand,
    Signature,
    Ticket,
    Timestamp,
    Verification,
    new_object,
    slot_setters,
)
from firmware.mikey.wire import (
    TOP_LEVEL,
    parse_chain,
    parse_header,
    serialize_chain,
    serialize_header,
)

_P = TypeVar("_P")


@dataclass(frozen=True, slots=True)
class Message:
    """A MIKEY message: HDR and its payload chain (RFC 3830 section 6)."""

    header: Header
    payloads: tuple[Payload, ...] = ()
    raw: bytes = field(default=b"", compare=False, repr=False)
    offsets: tuple[int, ...] = field(default=(), compare=False, repr=False)

    @property
    def data_type(self) -> int:
        return self.header.data_type

    def find(self, kind: type[_P]) -> _P | None:
        """The first payload of class ``kind``, or None."""
        for p in self.payloads:
            if isinstance(p, kind):
                return p
        return None

    def find_all(self, kind: type[_P]) -> list[_P]:
        return [p for p in self.payloads if isinstance(p, kind)]

    def require(self, kind: type[_P]) -> _P:
        p = self.find(kind)
        if p is None:
            raise MikeyError(f"{kind.__name__} payload missing", -1, ErrNo.UNSPECIFIED)
        return p

    def idr(self, role: IdRole) -> RoleIdentity | None:
        for p in self.payloads:
            if isinstance(p, RoleIdentity) and p.role == role:
                return p
        return None

    def randr(self, role: RandRole) -> bytes | None:
        for p in self.payloads:
            if isinstance(p, RoleRand) and p.role == role:
                return p.value
        return None

    @property
    def timestamp(self) -> Timestamp:
        return self.require(Timestamp)

    def payload_bytes(self, index: int) -> bytes:
        """The received bytes of payload ``index`` (Next Payload byte included)."""
        if not self.raw:
            raise MikeyError("message was not decoded: no received bytes", -1)
        end = self.offsets[index + 1] if index + 1 < len(self.offsets) else len(self.raw)
        return self.raw[self.offsets[index] : end]

    def ticket_bytes(self) -> bytes:
        """Received bytes of the TICKET payload (for ticket verification)."""
        return self.payload_bytes(_ticket_index(self))


def _ticket_index(msg: Message) -> int:
    for i, p in enumerate(msg.payloads):
        if isinstance(p, Ticket):
            return i
    raise MikeyError("TICKET payload missing", -1, ErrNo.INVALID_TICKET)


_MSG_HEADER, _MSG_PAYLOADS, _MSG_RAW, _MSG_OFFSETS = slot_setters(Message)


def decode(data: bytes) -> Message:
    """Decode one MIKEY message; raises MikeyError for anything else."""
    if type(data) is not bytes:
        data = bytes(data)  # the Reader slices ``bytes``; payload fields are then bytes too
    r = Reader(data)
    header, np = parse_header(r)
    offsets: list[int] = []
    payloads, _ = parse_chain(r, np, TOP_LEVEL, offsets)
    m: Message = new_object(Message)  # as the decoder constructors: fields set through the slots
    _MSG_HEADER(m, header)
    _MSG_PAYLOADS(m, tuple(payloads))
    _MSG_RAW(m, data)
    _MSG_OFFSETS(m, tuple(offsets))
    return m


def encode(message: Message) -> bytes:
    """Encode a message (Next Payload bytes follow the payload order)."""
    body = bytearray()
    first = serialize_chain(body, message.payloads)
    out = bytearray()
    serialize_header(out, message.header, first)
    return bytes(out + body)


def encode_decoded(message: Message) -> Message:
    """Encode and return the message as a receiver would see it (with raw bytes and offsets)."""
    return decode(encode(message))


# --- MAC coverage --------------------------------------------------------------------------------


def _v_mac_start(msg: Message) -> int:
    if not msg.raw:
        raise MikeyError("message was not decoded: no received bytes to verify", -1)
    v = msg.payloads[-1] if msg.payloads else None
    if not isinstance(v, Verification):
        raise MikeyError("last payload is not V", -1, ErrNo.AUTH_FAILURE)
    return len(msg.raw) - len(v.mac)


def _initiator_data_at(raw: bytes, start: int) -> int:
    """Offset in ``raw`` of the Initiator Data length field of the received TICKET payload that
    starts (with its Next Payload byte) at ``start``."""
    p = start + 8  # NP(1) Ticket Type(2) Subtype(1) Version(1) PRF/flags/Res(3)
    p += 2 + ((raw[p] << 8) | raw[p + 1])  # TP Data
    return p + 2 + ((raw[p] << 8) | raw[p + 1])  # Ticket Data


_REQUEST_INITS = frozenset({DataType.REQUEST_INIT_PSK, DataType.REQUEST_INIT_PK})
_RESOLVE_INITS = frozenset({DataType.RESOLVE_INIT_PSK, DataType.RESOLVE_INIT_PK})
INITIAL_TYPES = frozenset(
    {
        DataType.REQUEST_INIT_PSK,
        DataType.REQUEST_INIT_PK,
        DataType.TRANSFER_INIT,
        DataType.RESOLVE_INIT_PSK,
        DataType.RESOLVE_INIT_PK,
    }
)
RESPONSE_OF = {
    DataType.REQUEST_RESP: (DataType.REQUEST_INIT_PSK, DataType.REQUEST_INIT_PK),
    DataType.TRANSFER_RESP: (DataType.TRANSFER_INIT,),
    DataType.RESOLVE_RESP: (DataType.RESOLVE_INIT_PSK, DataType.RESOLVE_INIT_PK),
}


def mac_input(msg: Message, appended: bytes = b"") -> bytes:
    """The MAC input of a received message with V last: bytes before the MAC, with the TICKET's
    Initiator Data cut out for TRANSFER_INIT, then ``appended`` (Table 5.2's identities or the
    complete initial message)."""
    mac_start = _v_mac_start(msg)
    raw = msg.raw
    if msg.header.data_type == DataType.TRANSFER_INIT:  # its TICKET is mandatory (RFC 6043 4.2.2)
        i = _ticket_index(msg)  # never last (V is), so payload i + 1 starts at the TICKET's end
        cut = _initiator_data_at(raw, msg.offsets[i])
        return b"".join((raw[:cut], raw[msg.offsets[i + 1] : mac_start], appended))
    return b"".join((raw[:mac_start], appended))


def ticket_mac_input(ticket_raw: bytes) -> bytes:
    """Base-ticket V coverage (RFC 6043 A.1): the received TICKET payload from Ticket Type to the
    end of Ticket Data, minus the trailing MAC bytes of the V ending the Ticket Data.  The MAC
    length is taken by the caller from the parsed V; here we return up to the Ticket Data end."""
    return ticket_raw[1 : _initiator_data_at(ticket_raw, 0)]


def appended_identities(
    msg: Message,
    *,
    initiator: bytes | None = None,
    responder: bytes | None = None,
    kms: bytes | None = None,
) -> bytes:
    """Identities appended to an initial message's MAC input (RFC 6043 Table 5.2).

    Choice (spec Q6): each identity is the ID Data of the message's own IDR payload of that role
    when present, else the value the caller supplies (e.g. the configured KMS identity, or the
    identity learnt elsewhere); if neither exists the identity contributes no bytes, as minisip
    does for absent IDs in RFC 3830 (RFC 6043 5.5 says "the identities ... MUST directly follow",
    which presupposes both parties know them).
    """
    dt = msg.header.data_type
    if dt in _REQUEST_INITS:
        first, second = (IdRole.IDRi, initiator), (IdRole.IDRkms, kms)
    elif dt == DataType.TRANSFER_INIT:
        first, second = (IdRole.IDRi, initiator), (IdRole.IDRr, responder)
    elif dt in _RESOLVE_INITS:
        first, second = (IdRole.IDRr, responder), (IdRole.IDRkms, kms)
    else:
        return b""
    found: dict[int, bytes] = {}
    for p in msg.payloads:
        if isinstance(p, RoleIdentity) and p.role not in found:
            found[p.role] = p.data
    a, b = found.get(first[0]), found.get(second[0])
    return (first[1] or b"" if a is None else a) + (second[1] or b"" if b is None else b)


def coverage(
    msg: Message,
    *,
    initial: Message | None = None,
    initiator: bytes | None = None,
    responder: bytes | None = None,
    kms: bytes | None = None,
) -> bytes:
    """Full MAC input for ``msg`` per Table 5.2: initial messages get identities, responses get
    the complete received initial message, Error messages (and others) nothing."""
    dt = msg.header.data_type
    if dt in RESPONSE_OF:
        if initial is None or not initial.raw:
            raise MikeyError("response MAC needs the received initial message", -1)
        if initial.header.data_type not in RESPONSE_OF[dt]:
            raise MikeyError("initial message of the wrong data type", -1, ErrNo.INVALID_DT)
        return mac_input(msg, initial.raw)
    if dt in INITIAL_TYPES:
        ids = appended_identities(msg, initiator=initiator, responder=responder, kms=kms)
        return mac_input(msg, ids)
    return mac_input(msg)


def with_mac(msg: Message, mac: bytes) -> Message:
    """Replace the MAC of the final V payload."""
    v = msg.payloads[-1] if msg.payloads else None
    if not isinstance(v, Verification):
        raise MikeyError("last payload is not V", -1, ErrNo.UNSPECIFIED)
    check(len(mac) == len(v.mac), "MAC length does not match Auth alg")
    return Message(msg.header, (*msg.payloads[:-1], Verification(v.mac_alg, mac)))


__all__ = [
    "Message",
    "Signature",
    "appended_identities",
    "coverage",
    "decode",
    "encode",
    "encode_decoded",
    "mac_input",
    "ticket_mac_input",
    "with_mac",
]
_ = PayloadType
