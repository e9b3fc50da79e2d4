"""Every MIKEY payload as a frozen dataclass, and the payload-type registry (RFC 3830 section 6,
RFC 6043 section 6, RFC 4563, RFC 6043 App. A).

Rules and invariants:
- One frozen, slotted dataclass per payload, named after what it carries; fields hold decoded
  values (IntEnums for the registries whose values change the layout, plain ints for those the
  codec does not interpret), never a Next Payload byte: chains are serialized from the payload
  order (wire.py), so encode(decode(b)) == b and decode(encode(m)) == m.
- ``PAYLOAD_TYPES`` maps each payload class to its Next Payload value (RFC 3830 Table 6.1.b,
  RFC 6043 Table 6.2); wire.py builds its parser and serializer tables from it.
- Secrets (key data, KEMAC Encr data, Ticket Data) are ``repr=False``.
- ``slot_setters`` gives the decoder the slot descriptors of a dataclass, so it can build these
  same objects without the generated ``__init__``'s per-field ``object.__setattr__``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TypeVar

from firmware.mikey.buffer import U16, U32
from firmware.mikey.constants import (
    MIKEY_VERSION,
    CertType,
    DataType,
    DhGroup,
    EncrAlg,
    ErrNo,
    HashFunc,
    IdRole,
    IdType,
    KeyDataType,
    MacAlg,
    PayloadType,
    PkeCache,
    RandRole,
    SignType,
    TsRole,
    TsType,
)
from firmware.mikey.prf import PrfFunc

# --- HDR and CS ID maps (RFC 3830 6.1, RFC 4563 5, RFC 6043 6.1.1) ------------------------------


@dataclass(frozen=True, slots=True)
class SrtpIdEntry:
    """One SRTP-ID map entry; its CS ID is its 1-based position."""

    policy_no: int
    ssrc: int
    roc: int


@dataclass(frozen=True, slots=True)
class SrtpIdMap:
    entries: tuple[SrtpIdEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class EmptyMap:
    """RFC 4563 Empty map: no map info; ``cs_count`` is the HDR #CS (0 in MIKEY-TICKET)."""

    cs_count: int = 0


@dataclass(frozen=True, slots=True)
class GenericIdEntry:
    """One GENERIC-ID block (RFC 6043 6.1.1).  For Prot type SRTP, session_data is
    SSRC(4) [|| ROC(4) || SEQ(2) when ``s_flag``]; use ``srtp()`` to build one."""

    cs_id: int
    prot_type: int = 0
    s_flag: bool = False
    policy_nos: tuple[int, ...] = ()
    session_data: bytes = b""
    spi: bytes = b""

    @classmethod
    def srtp(
        cls,
        cs_id: int,
        ssrc: int,
        *,
        roc: int | None = None,
        seq: int | None = None,
        policy_nos: tuple[int, ...] = (),
        spi: bytes = b"",
    ) -> GenericIdEntry:
        data = U32.pack(ssrc)
        if roc is not None or seq is not None:
            data += U32.pack(roc or 0) + U16.pack(seq or 0)
        return cls(cs_id, 0, roc is not None or seq is not None, policy_nos, data, spi)

    @property
    def ssrc(self) -> int | None:
        if len(self.session_data) < 4:
            return None
        v: int = U32.unpack_from(self.session_data)[0]
        return v


@dataclass(frozen=True, slots=True)
class GenericIdMap:
    entries: tuple[GenericIdEntry, ...] = ()


CsIdMap = SrtpIdMap | EmptyMap | GenericIdMap


@dataclass(frozen=True, slots=True)
class Header:
    """Common header HDR (RFC 3830 6.1); always first, no payload type of its own."""

    data_type: DataType
    csb_id: int
    cs_map: CsIdMap = EmptyMap()
    prf_func: PrfFunc = PrfFunc.MIKEY_1
    v_flag: bool = False
    version: int = MIKEY_VERSION

    @property
    def cs_ids(self) -> tuple[int, ...]:
        """The CS IDs of the map: 1..#CS for SRTP-ID, the CS ID fields for GENERIC-ID."""
        m = self.cs_map
        if isinstance(m, SrtpIdMap):
            return tuple(range(1, len(m.entries) + 1))
        if isinstance(m, GenericIdMap):
            return tuple(e.cs_id for e in m.entries)
        return ()


# --- simple payloads ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timestamp:
    """T (RFC 3830 6.6, RFC 6043 6.3): value length fixed by ``ts_type`` (8, 8, 4, 4)."""

    ts_type: TsType
    value: bytes

    def as_64(self) -> bytes:
        """The 64-bit timestamp used where 64 bits are needed (AES-CM IV): COUNTER is left-padded
        with zeros (RFC 3830 6.6), NTP-UTC-32 gets a zero fraction (RFC 6043 6.3)."""
        if self.ts_type is TsType.COUNTER:
            return bytes(4) + self.value
        if self.ts_type is TsType.NTP_UTC_32:
            return self.value + bytes(4)
        return self.value


@dataclass(frozen=True, slots=True)
class RoleTimestamp:
    """TR (RFC 6043 6.4); ``role`` is the raw int when the TS Role is not registered."""

    role: TsRole | int
    ts_type: TsType
    value: bytes


@dataclass(frozen=True, slots=True)
class Rand:
    """RAND (RFC 3830 6.11)."""

    value: bytes


@dataclass(frozen=True, slots=True)
class RoleRand:
    """RANDR (RFC 6043 6.8); ``role`` is the raw int when the RAND Role is not registered."""

    role: RandRole | int
    value: bytes


@dataclass(frozen=True, slots=True)
class Identity:
    """ID (RFC 3830 6.7); ``id_type`` is the raw int when the ID Type is not registered."""

    id_type: IdType | int
    data: bytes


@dataclass(frozen=True, slots=True)
class RoleIdentity:
    """IDR (RFC 6043 6.6).  Identities under MACs are ``data`` only (RFC 6043 5.5).  ``role`` and
    ``id_type`` are raw ints when the value is not registered (e.g. a private-range role)."""

    role: IdRole | int
    id_type: IdType | int
    data: bytes


@dataclass(frozen=True, slots=True)
class Certificate:
    """CERT (RFC 3830 6.7)."""

    cert_type: CertType
    data: bytes


@dataclass(frozen=True, slots=True)
class CertHash:
    """CHASH (RFC 3830 6.8): hash length fixed by ``hash_func``."""

    hash_func: HashFunc
    value: bytes


@dataclass(frozen=True, slots=True)
class Kemac:
    """KEMAC (RFC 3830 6.2, RFC 6043 6.2).  ``encr_data`` is the (encrypted) concatenation of
    key-data sub-payloads; ``mac`` length is fixed by ``mac_alg`` (NULL in MIKEY-TICKET)."""

    encr_alg: EncrAlg
    encr_data: bytes = field(repr=False)
    mac_alg: MacAlg = MacAlg.NULL
    mac: bytes = b""


@dataclass(frozen=True, slots=True)
class Pke:
    """PKE (RFC 3830 6.4): 2-bit C, 14-bit length."""

    cache: PkeCache
    data: bytes


@dataclass(frozen=True, slots=True)
class KvNull:
    """KV type Null: no key validity data."""


@dataclass(frozen=True, slots=True)
class KvSpi:
    """KV type SPI/MKI: SPI len(1) || SPI."""

    spi: bytes


@dataclass(frozen=True, slots=True)
class KvInterval:
    """KV type Interval: VF len(1) || Valid From || VT len(1) || Valid To."""

    valid_from: bytes
    valid_to: bytes


KeyValidity = KvNull | KvSpi | KvInterval
KV_NULL = KvNull()


@dataclass(frozen=True, slots=True)
class Dh:
    """DH (RFC 3830 6.4): value length fixed by the group; Reserv(4 bits) KV(4 bits) KV data."""

    group: DhGroup
    value: bytes
    kv: KeyValidity = KvNull()
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class Signature:
    """SIGN (RFC 3830 6.5): no Next Payload byte, always last; 4-bit type, 12-bit length."""

    sign_type: SignType
    signature: bytes


@dataclass(frozen=True, slots=True)
class Verification:
    """V (RFC 3830 6.9): the MAC is computed over everything before the MAC bytes, V's Next
    Payload and Auth alg bytes included, followed by the data of RFC 6043 Table 5.2."""

    mac_alg: MacAlg
    mac: bytes


@dataclass(frozen=True, slots=True)
class PolicyParam:
    """One SP policy parameter TLV (RFC 3830 6.10)."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    """SP (RFC 3830 6.10); for SRTP the parameter types are ``SrtpParam``."""

    policy_no: int
    prot_type: int
    params: tuple[PolicyParam, ...] = ()


@dataclass(frozen=True, slots=True)
class ErrorPayload:
    """ERR (RFC 3830 6.12, RFC 6043 6.9); ``err_no`` is the raw int when not registered."""

    err_no: ErrNo | int
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class GeneralExtension:
    """General Extension (RFC 3830 6.15, RFC 4563, RFC 5410)."""

    ext_type: int
    data: bytes


class TpFlags(enum.IntFlag):
    """Ticket Policy flags D..O (RFC 6043 6.10), D the most significant of the 12 bits."""

    D = 0x800
    E = 0x400
    F = 0x200
    G = 0x100
    H = 0x080
    I = 0x040  # noqa: E741 - RFC name
    J = 0x020
    K = 0x010
    L = 0x008
    M = 0x004
    N = 0x002
    O = 0x001  # noqa: E741 - RFC name


@dataclass(frozen=True, slots=True)
class TicketPolicy:
    """TP (RFC 6043 6.10).  ``payloads`` is the TP Data after its First Payload byte; ``None``
    encodes a TP Data length of 0, ``()`` a TP Data of the single byte 0."""

    ticket_type: int
    subtype: int
    version: int
    prf_func: PrfFunc
    flags: TpFlags
    payloads: tuple[Payload, ...] | None = ()
    reserved: int = 0

    def find_all(self, kind: type[_P]) -> list[_P]:
        return [p for p in self.payloads or () if isinstance(p, kind)]

    def idr(self, role: IdRole | int) -> list[RoleIdentity]:
        return [p for p in self.payloads or () if isinstance(p, RoleIdentity) and p.role == role]

    def tr(self, role: TsRole | int) -> RoleTimestamp | None:
        for p in self.payloads or ():
            if isinstance(p, RoleTimestamp) and p.role == role:
                return p
        return None


@dataclass(frozen=True, slots=True)
class Ticket:
    """TICKET (RFC 6043 6.10): the granted policy, opaque Ticket Data, and Initiator Data
    (``None`` = length 0; else the payloads after its First Payload byte: Vi, Vr)."""

    policy: TicketPolicy
    ticket_data: bytes = field(repr=False)
    initiator_data: tuple[Payload, ...] | None = None


@dataclass(frozen=True, slots=True)
class KeyData:
    """Key data sub-payload (RFC 3830 6.13, RFC 6043 6.2.1); only inside KEMAC Encr data.
    ``salt`` is on the wire only for the +SALT types (and must be b"" for the others)."""

    key_type: KeyDataType
    key: bytes = field(repr=False)
    salt: bytes = field(default=b"", repr=False)
    kv: KeyValidity = KvNull()

    @property
    def spi(self) -> bytes | None:
        """The SPI (MKI) naming this key (KV type SPI, RFC 3830 6.13), or None."""
        return self.kv.spi if isinstance(self.kv, KvSpi) else None

    def with_spi(self, spi: bytes | None) -> KeyData:
        """This key named by ``spi`` (KV type SPI); ``None`` leaves it as it is."""
        if spi is None:
            return self
        return KeyData(self.key_type, self.key, self.salt, KvSpi(spi))


@dataclass(frozen=True, slots=True)
class TicketHeader:
    """THDR (RFC 6043 A.3): first element of base-ticket Ticket Data; no payload type."""

    data: bytes


Payload = (
    Kemac
    | Pke
    | Dh
    | Signature
    | Timestamp
    | Identity
    | Certificate
    | CertHash
    | Verification
    | SecurityPolicy
    | Rand
    | ErrorPayload
    | RoleTimestamp
    | RoleIdentity
    | RoleRand
    | TicketPolicy
    | Ticket
    | GeneralExtension
)
_P = TypeVar("_P")

PAYLOAD_TYPES: dict[type, PayloadType] = {
    Kemac: PayloadType.KEMAC,
    Pke: PayloadType.PKE,
    Dh: PayloadType.DH,
    Signature: PayloadType.SIGN,
    Timestamp: PayloadType.T,
    Identity: PayloadType.ID,
    Certificate: PayloadType.CERT,
    CertHash: PayloadType.CHASH,
    Verification: PayloadType.V,
    SecurityPolicy: PayloadType.SP,
    Rand: PayloadType.RAND,
    ErrorPayload: PayloadType.ERR,
    RoleTimestamp: PayloadType.TR,
    RoleIdentity: PayloadType.IDR,
    RoleRand: PayloadType.RANDR,
    TicketPolicy: PayloadType.TP,
    Ticket: PayloadType.TICKET,
    GeneralExtension: PayloadType.GENERAL_EXT,
}


@dataclass(frozen=True, slots=True)
class TicketData:
    """MIKEY base ticket Ticket Data: THDR then payloads (T, RAND, KEMAC, [IDRpsk], V)."""

    thdr: TicketHeader
    payloads: tuple[Payload, ...]


# --- construction without __init__ (for the decoder) ---------------------------------------------
# A frozen dataclass's generated __init__ sets every field through object.__setattr__ (a name
# lookup per field).  The decoder has every field at hand, already validated, so for the payloads
# of every MIKEY-TICKET exchange it sets the slots through their descriptors instead (a third
# cheaper).  The objects are the same: equality, hashing, repr and immutability are the dataclass's.

new_object = object.__new__
Setter = Callable[[object, object], None]


def slot_setters(cls: type) -> tuple[Setter, ...]:
    """The slot setters of every field of dataclass ``cls``, in field order."""
    return tuple(getattr(cls, f.name).__set__ for f in fields(cls))
