"""MIKEY messages: decode/encode and the MAC coverage of RFC 6043 section 5.5, Table 5.2.

Rules and invariants:
- ``decode`` keeps the received bytes (``Message.raw``) and each payload's start offset
  (``Message.offsets``); MACs are always computed over ``raw``, never over a re-encoding.
  ``raw`` and ``offsets`` take no part in equality, so decode(encode(m)) == m.
- ``decode`` is total: it returns a Message or raises MikeyError (see errors.py).  Given
  ``DecodeLimits`` (``UE_LIMITS`` for what UEs send), it refuses a message over the size bound
  before parsing anything and stops at the payload bound, so what an unauthenticated sender can
  make us parse before the MAC check is bounded.
- MAC input (``mac_input``) = the received message with only the MAC bytes removed (V's Next
  Payload and Auth alg bytes stay), followed by what Table 5.2 appends; for TRANSFER_INIT the
  TICKET's Initiator Data length and Initiator Data fields are cut out (a TRANSFER_INIT without
  its mandatory TICKET has no MAC input: MikeyError(INVALID_TICKET)).
- The base ticket's V (RFC 6043 A.1) covers the TICKET payload minus its Next Payload byte, the
  Initiator Data length and data, and the MAC bytes (``ticket_mac_input``).
"""

from __future__ import annotations

import enum
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
    TicketPolicy,
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


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds on the work ``decode`` does for a message whose MAC is not checked yet: its size
    in bytes and the payloads it may carry, nested ones (TP Data, Initiator Data) included."""

    max_size: int
    max_payloads: int


UE_LIMITS = DecodeLimits(max_size=16384, max_payloads=128)
"""For what UEs send the KMS (REQUEST_INIT, RESOLVE_INIT) and what reaches Xk (TRANSFER_INIT /
RESP): a full exchange's messages are a few hundred bytes with 6-20 payloads; the bounds leave
room for a Ticket Policy naming ~100 responders (RFC 6043 6.10: one IDRr payload per responder)
and cap the cost of a crafted message at a few normal ones (bench_mikey measures it)."""


def decode(data: bytes, *, limits: DecodeLimits | None = None) -> Message:
    """Decode one MIKEY message; raises MikeyError for anything else.  With ``limits``, a longer
    message is refused before any parsing and the payload count is bounded while parsing
    (ERR Unspecified, offset of the first byte / payload beyond the bound)."""
    if type(data) is not bytes:
        data = bytes(data)  # the Reader slices ``bytes``; payload fields are then bytes too
    r = Reader(data)
    if limits is not None:
        if len(data) > limits.max_size:
            raise MikeyError(f"message longer than {limits.max_size} bytes", limits.max_size,
                             ErrNo.UNSPECIFIED)  # fmt: skip
        r.budget = limits.max_payloads
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


class AbsentIdentity(enum.Enum):
    """What stands in the MAC input for an identity an initial message omits (spec Q6)."""

    KNOWN_OR_NOTHING = "the identity the verifier knows otherwise (caller-supplied), else no bytes"
    FROM_POLICY = "the identity of that role in the ticket (or requested Ticket Policy)"


ABSENT_IDENTITY = AbsentIdentity.KNOWN_OR_NOTHING
"""Our reading of RFC 6043 5.5, 'For initial messages, the identities (not whole payloads) of the
parties involved MUST directly follow the MIKEY message in the Verification MAC/Signature
calculation': the parties involved are the ones the message names in its IDR payloads, else the
ones the verifier knows by other means (4.2.1.2: IDRi 'MAY be left out when it can be expected
that the KMS can identify the Initiator by other means'; IDRkms when 'the KMS has a single
identity'), else nothing - as minisip does for absent IDs in RFC 3830.  What we send and try
first."""

ABSENT_IDENTITY_ACCEPTED = (AbsentIdentity.KNOWN_OR_NOTHING, AbsentIdentity.FROM_POLICY)
"""Both readings verify: the other one takes the identity of an omitted IDR from the ticket the
message carries (TRANSFER_INIT, RESOLVE_INIT) or the Ticket Policy it requests (REQUEST_INIT),
RFC 6043 6.10: 'IDRi contains the identity of the peer that requested or created the ticket',
'IDRr is the identity of a responder ... authorized to resolve the ticket'."""

MAX_IDENTITY_CANDIDATES = 8  # other-reading MAC inputs tried at most (one HMAC each)


_APPENDED: dict[int, tuple[tuple[IdRole, int], tuple[IdRole, int]]] = {
    # data type: (role, index into (initiator, responder, kms)) of Identity_x, Identity_y
    DataType.REQUEST_INIT_PSK: ((IdRole.IDRi, 0), (IdRole.IDRkms, 2)),
    DataType.REQUEST_INIT_PK: ((IdRole.IDRi, 0), (IdRole.IDRkms, 2)),
    DataType.TRANSFER_INIT: ((IdRole.IDRi, 0), (IdRole.IDRr, 1)),
    DataType.RESOLVE_INIT_PSK: ((IdRole.IDRr, 1), (IdRole.IDRkms, 2)),
    DataType.RESOLVE_INIT_PK: ((IdRole.IDRr, 1), (IdRole.IDRkms, 2)),
}


def _sent_identities(msg: Message) -> dict[int, bytes]:
    """ID Data of the first IDR payload of each role the message carries."""
    found: dict[int, bytes] = {}
    for p in msg.payloads:
        if isinstance(p, RoleIdentity) and p.role not in found:
            found[p.role] = p.data
    return found


def appended_identities(
    msg: Message,
    *,
    initiator: bytes | None = None,
    responder: bytes | None = None,
    kms: bytes | None = None,
) -> bytes:
    """Identities appended to an initial message's MAC input (RFC 6043 Table 5.2), read as
    ``ABSENT_IDENTITY`` says: each is the ID Data of the message's own IDR payload of that role
    when present, else the value the caller supplies (e.g. the configured KMS identity, or the
    identity learnt elsewhere), else no bytes."""
    slots = _APPENDED.get(msg.header.data_type)
    if slots is None:
        return b""
    known = (initiator, responder, kms)
    found = _sent_identities(msg)
    (r1, k1), (r2, k2) = slots
    a, b = found.get(r1), found.get(r2)
    return (known[k1] or b"" if a is None else a) + (known[k2] or b"" if b is None else b)


def identity_candidates(
    msg: Message,
    *,
    initiator: bytes | None = None,
    responder: bytes | None = None,
    kms: bytes | None = None,
) -> list[bytes]:
    """Every appended-identities string an initial message's MAC may have been computed over,
    ``ABSENT_IDENTITY`` first, then (``ABSENT_IDENTITY_ACCEPTED``) the ticket's / requested
    policy's identities for each role the message omits - several IDRr make several candidates,
    at most ``MAX_IDENTITY_CANDIDATES`` in all."""
    first = appended_identities(msg, initiator=initiator, responder=responder, kms=kms)
    slots = _APPENDED.get(msg.header.data_type)
    found = _sent_identities(msg)
    if slots is None or all(r in found for r, _ in slots):
        return [first]
    ticket = next((p for p in msg.payloads if isinstance(p, Ticket)), None)
    policy = ticket.policy if ticket is not None else msg.find(TicketPolicy)
    known = (initiator, responder, kms)
    options: list[list[bytes]] = []
    for r, k in slots:
        if r in found:
            options.append([found[r]])
            continue
        from_policy = [p.data for p in policy.idr(r)] if policy is not None else []
        options.append(from_policy or [known[k] or b""])
    out = [first]
    for a in options[0]:
        for b in options[1]:
            if a + b not in out and len(out) <= MAX_IDENTITY_CANDIDATES:
                out.append(a + b)
    return out


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


class KemacIvT(enum.Enum):
    """Which T feeds the AES-CM IV of a KEMAC that a response carries (spec Q4)."""

    CARRYING_MESSAGE = "the T payload of the message that carries the KEMAC"
    INITIAL_MESSAGE = "the T payload of the initial message the response answers"


KEMAC_IV_T = KemacIvT.CARRYING_MESSAGE
"""Our reading of RFC 3830 4.2.3, 'IV = (S XOR (0x0000 || CSB ID || T)) || 0x0000, where S is a
112-bit salting key ... and where T is the 64-bit timestamp sent by the Initiator': in RFC 3830
only the Initiator sends a KEMAC and its response reuses its T, so "the Initiator" is the sender
of the KEMAC; RFC 6043 4.2.1.5 / 4.2.3.5 make the KMS's responses carry 'a fresh timestamp value
(unlike [RFC3830])', and nothing says to reuse the request's T for the IV, so the T of the
message that carries the KEMAC feeds its IV (the ticket's own T for the base-ticket KEMAC,
App. A.1)."""


def kemac_iv_t(
    msg: Message, initial: Message | None = None, reading: KemacIvT = KEMAC_IV_T
) -> bytes:
    """The 64-bit T of the AES-CM IV for the KEMAC of ``msg`` (a response names its ``initial``
    message; ``reading`` exists to show the other reading of Q4 in tests)."""
    if reading is KemacIvT.INITIAL_MESSAGE and initial is not None:
        return initial.timestamp.as_64()
    return msg.timestamp.as_64()


def with_mac(msg: Message, mac: bytes) -> Message:
    """Replace the MAC of the final V payload."""
    v = msg.payloads[-1] if msg.payloads else None
    if not isinstance(v, Verification):
        raise MikeyError("last payload is not V", -1, ErrNo.UNSPECIFIED)
    check(len(mac) == len(v.mac), "MAC length does not match Auth alg")
    return Message(msg.header, (*msg.payloads[:-1], Verification(v.mac_alg, mac)))


__all__ = [
    "ABSENT_IDENTITY",
    "ABSENT_IDENTITY_ACCEPTED",
    "KEMAC_IV_T",
    "UE_LIMITS",
    "AbsentIdentity",
    "DecodeLimits",
    "KemacIvT",
    "Message",
    "Signature",
    "appended_identities",
    "coverage",
    "decode",
    "encode",
    "encode_decoded",
    "identity_candidates",
    "kemac_iv_t",
    "mac_input",
    "ticket_mac_input",
    "with_mac",
]
_ = PayloadType
