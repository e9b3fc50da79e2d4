"""Wire format of every MIKEY payload: symmetric ``parse_x(reader)`` / ``serialize_x(out, p)``
pairs, the payload chain, key-data sub-payloads and base-ticket Ticket Data (RFC 3830 section 6,
RFC 6043 section 6 and App. A; aioquic packet.py / hyperframe frame.py style).

Rules and invariants:
- ``PARSERS`` maps a Next Payload value to its parser, ``SERIALIZERS`` a payload class to its
  serializer; each pair handles the payload body only, the chain writes and reads the Next
  Payload bytes (``parse_chain`` / ``serialize_chain``), so encode(decode(b)) == b for every
  valid message and decode(encode(m)) == m.
- Every read is bounds-checked first (buffer.Reader; the hot parsers - HDR, T, RANDR, IDR, V,
  TP, TICKET, the chain - index ``Reader.buf`` after one check of a fixed-layout run and report a
  cut with ``Reader.short``).  Any problem raises MikeyError(message, absolute offset, ERR
  number); struct.error, IndexError and ValueError cannot escape.  Enum values are looked up in
  dicts built at import (``enum_table``), never through ``Enum.__call__``.
- The decoder builds the hot payloads with ``_mk_*`` constructors that set the slots directly
  (same objects as the dataclass constructors, see payloads.slot_setters).
- An open-registry value (member or raw int, ``IdRole | int`` ...) is held as ``object`` from
  its lookup to its slot: compiled with mypyc, a value typed ``X | int`` is a native int and
  would lose its member (``_open``, the ``_mk_*`` parameters).
- Unknown Next Payload values are refused (the payload's length cannot be known, so it cannot be
  skipped); payloads of a known type in an unexpected place are kept, so callers may ignore them
  as RFC 6043 asks.  TP Data and Initiator Data may not contain TP/TICKET (bounds recursion) nor
  key-data sub-payloads (those live only in KEMAC Encr data, see ``parse_key_data``).
- Fields whose registry changes the layout are IntEnums and unknown values are refused (see
  constants.py for which and why); the open role/type registries (ID Role, RAND Role, TS Role,
  ID Type, Error no) give the member when registered, else the raw int; the registries the codec
  does not interpret (Prot type, SP parameter type, General Extension type, Ticket Type) are
  plain ints.  An unknown data type is refused with ERR 13 (RFC 4738 6).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import TypeVar

from firmware.mikey.buffer import U16, U32, Reader, check, enum_table, fit_u8, len8, len16
from firmware.mikey.constants import (
    MIKEY_VERSION,
    CertType,
    CsIdMapType,
    DataType,
    DhGroup,
    EncrAlg,
    ErrNo,
    HashFunc,
    IdRole,
    IdType,
    KeyDataType,
    KvType,
    MacAlg,
    PayloadType,
    PkeCache,
    RandRole,
    SignType,
    TsRole,
    TsType,
)
from firmware.mikey.errors import MikeyError
from firmware.mikey.payloads import (
    PAYLOAD_TYPES,
    CertHash,
    Certificate,
    CsIdMap,
    Dh,
    EmptyMap,
    ErrorPayload,
    GeneralExtension,
    GenericIdEntry,
    GenericIdMap,
    Header,
    Identity,
    Kemac,
    KeyData,
    KeyValidity,
    KvInterval,
    KvNull,
    KvSpi,
    Payload,
    Pke,
    PolicyParam,
    Rand,
    RoleIdentity,
    RoleRand,
    RoleTimestamp,
    SecurityPolicy,
    Signature,
    SrtpIdEntry,
    SrtpIdMap,
    Ticket,
    TicketData,
    TicketHeader,
    TicketPolicy,
    Timestamp,
    TpFlags,
    Verification,
    new_object,
    slot_setters,
)
from firmware.mikey.prf import PrfFunc

_E = TypeVar("_E", bound=enum.IntEnum)

# value -> member, built once: Enum.__call__ is slow, a dict lookup is not
_DATA_TYPES = enum_table(DataType)
_PRF_FUNCS = enum_table(PrfFunc)
_TS_TYPES = enum_table(TsType)
_TS_ROLES = enum_table(TsRole)
_ID_ROLES = enum_table(IdRole)
_ID_TYPES = enum_table(IdType)
_RAND_ROLES = enum_table(RandRole)
_MAC_ALGS = enum_table(MacAlg)
_ERR_NOS = enum_table(ErrNo)
_TS_LEN = tuple(t.value_len for t in TsType)
_MAC_LEN = tuple(a.mac_len for a in MacAlg)
_ENUMS = (CertType, DhGroup, EncrAlg, HashFunc, KeyDataType, KvType, MacAlg, PkeCache, SignType)
_MEMBERS: dict[type, dict[int, enum.IntEnum]] = {cls: enum_table(cls) for cls in _ENUMS}


def _enum(cls: type[_E], value: int, r: Reader, err: ErrNo, back: int) -> _E:
    """``cls(value)`` through a prebuilt dict, refusing unknown values (offset ``pos - back``)."""
    m = _MEMBERS[cls].get(value)
    if m is None:
        raise r.fail(f"unknown {cls.__name__} value {value}", err, r.pos - back)
    return m  # type: ignore[return-value]


def _bytes2(a: int, b: int | None, what: str) -> bytes:
    """One or two open-registry bytes (members or raw ints); an int that does not fit is refused
    like every encoder refusal (bytes() raises ValueError only then: no check on the hot path)."""
    try:
        return bytes((a,)) if b is None else bytes((a, b))
    except ValueError:
        raise MikeyError(f"{what} does not fit in 8 bits", -1, ErrNo.UNSPECIFIED) from None


# --- decoder constructors -------------------------------------------------------------------------

_HDR_DT, _HDR_CSB, _HDR_MAP, _HDR_PRF, _HDR_V, _HDR_VER = slot_setters(Header)
_GEN_CS, _GEN_PROT, _GEN_S, _GEN_POL, _GEN_DATA, _GEN_SPI = slot_setters(GenericIdEntry)
(_GMAP_ENTRIES,) = slot_setters(GenericIdMap)
_T_TYPE, _T_VALUE = slot_setters(Timestamp)
_RANDR_ROLE, _RANDR_VALUE = slot_setters(RoleRand)
_IDR_ROLE, _IDR_TYPE, _IDR_DATA = slot_setters(RoleIdentity)
_V_ALG, _V_MAC = slot_setters(Verification)
_TR_ROLE, _TR_TYPE, _TR_VALUE = slot_setters(RoleTimestamp)
_ID_TYPE, _ID_DATA = slot_setters(Identity)
_ERR_NO, _ERR_RES = slot_setters(ErrorPayload)
_TP_TYPE, _TP_SUB, _TP_VER, _TP_PRF, _TP_FLAGS_, _TP_DATA, _TP_RES = slot_setters(TicketPolicy)
_TICKET_POLICY, _TICKET_DATA, _TICKET_IDATA = slot_setters(Ticket)


def _open(table: dict[int, _E], v: int) -> object:
    """The member registered for ``v`` in an open registry, else the raw int."""
    m: object = table.get(v)
    return v if m is None else m


def _mk_header(dt: DataType, csb_id: int, cs_map: CsIdMap, prf: PrfFunc, v: bool) -> Header:
    o: Header = new_object(Header)
    _HDR_DT(o, dt)
    _HDR_CSB(o, csb_id)
    _HDR_MAP(o, cs_map)
    _HDR_PRF(o, prf)
    _HDR_V(o, v)
    _HDR_VER(o, MIKEY_VERSION)
    return o


def _mk_generic_entry(cs_id: int, prot: int, s: bool, pols: tuple[int, ...], data: bytes,
                    spi: bytes) -> GenericIdEntry:  # fmt: skip
    o: GenericIdEntry = new_object(GenericIdEntry)
    _GEN_CS(o, cs_id)
    _GEN_PROT(o, prot)
    _GEN_S(o, s)
    _GEN_POL(o, pols)
    _GEN_DATA(o, data)
    _GEN_SPI(o, spi)
    return o


def _mk_generic_map(entries: tuple[GenericIdEntry, ...]) -> GenericIdMap:
    o: GenericIdMap = new_object(GenericIdMap)
    _GMAP_ENTRIES(o, entries)
    return o


def _mk_t(ts_type: TsType, value: bytes) -> Timestamp:
    o: Timestamp = new_object(Timestamp)
    _T_TYPE(o, ts_type)
    _T_VALUE(o, value)
    return o


def _mk_randr(role: object, value: bytes) -> RoleRand:
    o: RoleRand = new_object(RoleRand)
    _RANDR_ROLE(o, role)
    _RANDR_VALUE(o, value)
    return o


def _mk_idr(role: object, id_type: object, data: bytes) -> RoleIdentity:
    o: RoleIdentity = new_object(RoleIdentity)
    _IDR_ROLE(o, role)
    _IDR_TYPE(o, id_type)
    _IDR_DATA(o, data)
    return o


def _mk_tr(role: object, ts_type: TsType, value: bytes) -> RoleTimestamp:
    o: RoleTimestamp = new_object(RoleTimestamp)
    _TR_ROLE(o, role)
    _TR_TYPE(o, ts_type)
    _TR_VALUE(o, value)
    return o


def _mk_id(id_type: object, data: bytes) -> Identity:
    o: Identity = new_object(Identity)
    _ID_TYPE(o, id_type)
    _ID_DATA(o, data)
    return o


def _mk_err(err_no: object, reserved: int) -> ErrorPayload:
    o: ErrorPayload = new_object(ErrorPayload)
    _ERR_NO(o, err_no)
    _ERR_RES(o, reserved)
    return o


def _mk_v(alg: MacAlg, mac: bytes) -> Verification:
    o: Verification = new_object(Verification)
    _V_ALG(o, alg)
    _V_MAC(o, mac)
    return o


def _mk_tp(ticket_type: int, subtype: int, version: int, prf: PrfFunc, flags: TpFlags,
           payloads: tuple[Payload, ...] | None, reserved: int) -> TicketPolicy:  # fmt: skip
    o: TicketPolicy = new_object(TicketPolicy)
    _TP_TYPE(o, ticket_type)
    _TP_SUB(o, subtype)
    _TP_VER(o, version)
    _TP_PRF(o, prf)
    _TP_FLAGS_(o, flags)
    _TP_DATA(o, payloads)
    _TP_RES(o, reserved)
    return o


def _mk_ticket(policy: TicketPolicy, data: bytes, idata: tuple[Payload, ...] | None) -> Ticket:
    o: Ticket = new_object(Ticket)
    _TICKET_POLICY(o, policy)
    _TICKET_DATA(o, data)
    _TICKET_IDATA(o, idata)
    return o


# --- HDR and CS ID maps (RFC 3830 6.1, RFC 4563 5, RFC 6043 6.1.1) ------------------------------


_GENERIC_HEAD = (("GENERIC-ID CS ID", 1), ("GENERIC-ID Prot type", 1), ("GENERIC-ID S/#P", 1))


def parse_header(r: Reader) -> tuple[Header, int]:
    buf, p, end = r.buf, r.pos, r.end
    if p + 10 > end:
        raise r.fail(f"truncated HDR: need 10 bytes, have {end - p}")
    version, np, vp = buf[p], buf[p + 2], buf[p + 3]
    if version != MIKEY_VERSION:
        raise r.fail(f"unsupported MIKEY version {version}", ErrNo.UNSPECIFIED)
    data_type = _DATA_TYPES.get(buf[p + 1])
    if data_type is None:  # RFC 4738 6: Error no 13 "Unsupported message type"
        raise r.fail(f"unknown DataType value {buf[p + 1]}", ErrNo.UNSUPPORTED_MESSAGE_TYPE, p + 1)
    prf_func = _PRF_FUNCS.get(vp & 0x7F)
    if prf_func is None:
        raise r.fail(f"unknown PrfFunc value {vp & 0x7F}", ErrNo.INVALID_PRF, p + 3)
    csb_id: int = U32.unpack_from(buf, p + 4)[0]
    ncs, map_type = buf[p + 8], buf[p + 9]
    p += 10
    cs_map: SrtpIdMap | EmptyMap | GenericIdMap
    if map_type == CsIdMapType.GENERIC_ID:
        gentries = []
        for _ in range(ncs):
            if p + 3 > end:
                raise r.short(p, _GENERIC_HEAD)
            sp = buf[p + 2]
            q = p + 3 + (sp & 0x7F)
            if q + 2 > end:
                raise r.short(p + 3, (("GENERIC-ID policy list", sp & 0x7F),
                                      ("GENERIC-ID session data length", 2)))  # fmt: skip
            q2 = q + 2 + ((buf[q] << 8) | buf[q + 1])
            if q2 + 1 > end:
                raise r.short(q + 2, (("GENERIC-ID session data", q2 - q - 2),
                                      ("GENERIC-ID SPI length", 1)))  # fmt: skip
            q3 = q2 + 1 + buf[q2]
            if q3 > end:
                raise r.short(q2 + 1, (("GENERIC-ID SPI", buf[q2]),))
            entry = _mk_generic_entry(buf[p], buf[p + 1], sp > 0x7F, tuple(buf[p + 3 : q]),
                                      buf[q + 2 : q2], buf[q2 + 1 : q3])  # fmt: skip
            gentries.append(entry)
            p = q3
        cs_map = _mk_generic_map(tuple(gentries))
    elif map_type == CsIdMapType.EMPTY:
        cs_map = EmptyMap(ncs)
    elif map_type == CsIdMapType.SRTP_ID:
        if p + 9 * ncs > end:
            raise r.fail(f"truncated SRTP-ID map: need {9 * ncs} bytes, have {end - p}", at=p)
        entries = []
        for _ in range(ncs):
            entries.append(SrtpIdEntry(buf[p], U32.unpack_from(buf, p + 1)[0],
                                       U32.unpack_from(buf, p + 5)[0]))  # fmt: skip
            p += 9
        cs_map = SrtpIdMap(tuple(entries))
    else:
        raise r.fail(f"unknown CsIdMapType value {map_type}", ErrNo.UNSPECIFIED, p - 1)
    r.pos = p
    return _mk_header(data_type, csb_id, cs_map, prf_func, vp > 0x7F), np


def serialize_header(out: bytearray, h: Header, next_payload: int) -> None:
    check(h.version == MIKEY_VERSION, "HDR version must be 1")
    check(0 <= h.csb_id <= 0xFFFFFFFF, "CSB ID does not fit in 32 bits")
    m = h.cs_map
    if isinstance(m, SrtpIdMap):
        ncs, mtype = len(m.entries), CsIdMapType.SRTP_ID
    elif isinstance(m, EmptyMap):
        ncs, mtype = m.cs_count, CsIdMapType.EMPTY
    else:
        ncs, mtype = len(m.entries), CsIdMapType.GENERIC_ID
    fit_u8(ncs, "#CS")
    out += bytes((h.version, h.data_type, next_payload, (0x80 if h.v_flag else 0) | h.prf_func))
    out += U32.pack(h.csb_id)
    out += bytes((ncs, mtype))
    if isinstance(m, SrtpIdMap):
        for e in m.entries:
            check(0 <= e.ssrc <= 0xFFFFFFFF and 0 <= e.roc <= 0xFFFFFFFF, "SSRC/ROC range")
            out.append(fit_u8(e.policy_no, "Policy_no"))
            out += U32.pack(e.ssrc) + U32.pack(e.roc)
    elif isinstance(m, GenericIdMap):
        for g in m.entries:
            check(len(g.policy_nos) <= 0x7F, "GENERIC-ID #P larger than 127")
            out += bytes((fit_u8(g.cs_id, "CS ID"), fit_u8(g.prot_type, "Prot type")))
            out.append((0x80 if g.s_flag else 0) | len(g.policy_nos))
            out += bytes(fit_u8(p, "Policy_no") for p in g.policy_nos)
            out += len16(g.session_data, "Session Data") + g.session_data
            out += len8(g.spi, "SPI") + g.spi


# --- parse / serialize pairs (body only: the Next Payload byte is handled by the chain) ---------


def _parse_ts_value(r: Reader) -> tuple[TsType, bytes]:
    buf, p = r.buf, r.pos
    if p >= r.end:
        raise r.fail("truncated TS type: need 1 byte, have 0")
    ts_type = _TS_TYPES.get(buf[p])
    if ts_type is None:
        raise r.fail(f"unknown TsType value {buf[p]}", ErrNo.INVALID_TS)
    n = _TS_LEN[ts_type]
    q = p + 1 + n
    if q > r.end:
        raise r.fail(f"truncated TS value: need {n} bytes, have {r.end - p - 1}", at=p + 1)
    r.pos = q
    return ts_type, buf[p + 1 : q]


def _parse_t(r: Reader) -> Timestamp:
    return _mk_t(*_parse_ts_value(r))


def _serialize_t(out: bytearray, p: Timestamp) -> None:
    check(len(p.value) == p.ts_type.value_len, "TS value length does not match TS type")
    out.append(p.ts_type)
    out += p.value


def _parse_tr(r: Reader) -> RoleTimestamp:
    role = _open(_TS_ROLES, r.u8("TS Role"))
    return _mk_tr(role, *_parse_ts_value(r))


def _serialize_tr(out: bytearray, p: RoleTimestamp) -> None:
    check(len(p.value) == p.ts_type.value_len, "TS value length does not match TS type")
    out += _bytes2(p.role, p.ts_type, "TS Role")
    out += p.value


def _parse_rand(r: Reader) -> Rand:
    return Rand(r.take(r.u8("RAND len"), "RAND"))


def _serialize_rand(out: bytearray, p: Rand) -> None:
    out += len8(p.value, "RAND") + p.value


def _parse_randr(r: Reader) -> RoleRand:
    buf, p = r.buf, r.pos
    if p >= r.end:
        raise r.fail("truncated RAND Role: need 1 byte, have 0")
    role: object = _RAND_ROLES.get(buf[p])  # inline _open (hot)
    if role is None:
        role = buf[p]
    if p + 1 >= r.end:
        raise r.fail("truncated RAND length: need 1 byte, have 0", at=p + 1)
    q = p + 2 + buf[p + 1]
    if q > r.end:
        raise r.fail(f"truncated RAND: need {buf[p + 1]} bytes, have {r.end - p - 2}", at=p + 2)
    r.pos = q
    return _mk_randr(role, buf[p + 2 : q])


def _serialize_randr(out: bytearray, p: RoleRand) -> None:
    out += _bytes2(p.role, None, "RAND Role")
    out += len8(p.value, "RAND") + p.value


def _parse_id(r: Reader) -> Identity:
    id_type = _open(_ID_TYPES, r.u8("ID type"))
    return _mk_id(id_type, r.take(r.u16("ID len"), "ID data"))


def _serialize_id(out: bytearray, p: Identity) -> None:
    out += _bytes2(p.id_type, None, "ID type")
    out += len16(p.data, "ID data") + p.data


def _parse_idr(r: Reader) -> RoleIdentity:
    buf, p = r.buf, r.pos
    if p + 4 > r.end:
        raise r.fail(f"truncated IDR: need 4 bytes, have {r.end - p}")
    role: object = _ID_ROLES.get(buf[p])  # inline _open (hot)
    if role is None:
        role = buf[p]
    id_type: object = _ID_TYPES.get(buf[p + 1])
    if id_type is None:
        id_type = buf[p + 1]
    n = (buf[p + 2] << 8) | buf[p + 3]
    q = p + 4 + n
    if q > r.end:
        raise r.fail(f"truncated ID Data: need {n} bytes, have {r.end - p - 4}", at=p + 4)
    r.pos = q
    return _mk_idr(role, id_type, buf[p + 4 : q])


def _serialize_idr(out: bytearray, p: RoleIdentity) -> None:
    out += _bytes2(p.role, p.id_type, "ID Role / ID Type")
    out += len16(p.data, "ID Data") + p.data


def _parse_cert(r: Reader) -> Certificate:
    cert_type = _enum(CertType, r.u8("Cert type"), r, ErrNo.INVALID_CERT, 1)
    return Certificate(cert_type, r.take(r.u16("Cert len"), "Cert data"))


def _serialize_cert(out: bytearray, p: Certificate) -> None:
    out.append(p.cert_type)
    out += len16(p.data, "Cert data") + p.data


def _parse_chash(r: Reader) -> CertHash:
    func = _enum(HashFunc, r.u8("Hash func"), r, ErrNo.INVALID_HA, 1)
    return CertHash(func, r.take(func.hash_len, "Hash"))


def _serialize_chash(out: bytearray, p: CertHash) -> None:
    check(len(p.value) == p.hash_func.hash_len, "CHASH length does not match Hash func")
    out.append(p.hash_func)
    out += p.value


def _parse_kemac(r: Reader) -> Kemac:
    encr = _enum(EncrAlg, r.u8("Encr alg"), r, ErrNo.INVALID_EA, 1)
    data = r.take(r.u16("Encr data len"), "Encr data")
    mac_alg = _enum(MacAlg, r.u8("MAC alg"), r, ErrNo.INVALID_MAC, 1)
    return Kemac(encr, data, mac_alg, r.take(mac_alg.mac_len, "KEMAC MAC"))


def _serialize_kemac(out: bytearray, p: Kemac) -> None:
    check(len(p.mac) == p.mac_alg.mac_len, "KEMAC MAC length does not match MAC alg")
    out.append(p.encr_alg)
    out += len16(p.encr_data, "Encr data") + p.encr_data
    out.append(p.mac_alg)
    out += p.mac


def _parse_pke(r: Reader) -> Pke:
    w = r.u16("PKE C/Data len")
    cache = _enum(PkeCache, w >> 14, r, ErrNo.UNSPECIFIED, 2)
    return Pke(cache, r.take(w & 0x3FFF, "PKE data"))


def _serialize_pke(out: bytearray, p: Pke) -> None:
    check(len(p.data) <= 0x3FFF, "PKE data longer than 16383 bytes")
    out += U16.pack((p.cache << 14) | len(p.data)) + p.data


def _parse_kv(r: Reader, kv_type: KvType) -> KeyValidity:
    if kv_type is KvType.NULL:
        return KvNull()
    if kv_type is KvType.SPI:
        return KvSpi(r.take(r.u8("SPI length"), "SPI"))
    vf = r.take(r.u8("VF length"), "Valid From")
    return KvInterval(vf, r.take(r.u8("VT length"), "Valid To"))


def _kv_type(kv: KeyValidity) -> KvType:
    if isinstance(kv, KvSpi):
        return KvType.SPI
    if isinstance(kv, KvInterval):
        return KvType.INTERVAL
    return KvType.NULL


def _serialize_kv(out: bytearray, kv: KeyValidity) -> None:
    if isinstance(kv, KvSpi):
        out += len8(kv.spi, "SPI") + kv.spi
    elif isinstance(kv, KvInterval):
        out += len8(kv.valid_from, "Valid From") + kv.valid_from
        out += len8(kv.valid_to, "Valid To") + kv.valid_to


def _parse_dh(r: Reader) -> Dh:
    group = _enum(DhGroup, r.u8("DH-Group"), r, ErrNo.INVALID_DH, 1)
    value = r.take(group.value_len, "DH-value")
    b = r.u8("DH Reserv/KV")
    kv_type = _enum(KvType, b & 0x0F, r, ErrNo.UNSPECIFIED, 1)
    return Dh(group, value, _parse_kv(r, kv_type), b >> 4)


def _serialize_dh(out: bytearray, p: Dh) -> None:
    check(len(p.value) == p.group.value_len, "DH-value length does not match DH-Group")
    check(0 <= p.reserved <= 0x0F, "DH Reserv does not fit in 4 bits")
    out.append(p.group)
    out += p.value
    out.append((p.reserved << 4) | _kv_type(p.kv))
    _serialize_kv(out, p.kv)


def _parse_sign(r: Reader) -> Signature:
    w = r.u16("SIGN type/len")
    stype = _enum(SignType, w >> 12, r, ErrNo.UNSPECIFIED, 2)
    return Signature(stype, r.take(w & 0x0FFF, "Signature"))


def _serialize_sign(out: bytearray, p: Signature) -> None:
    check(len(p.signature) <= 0x0FFF, "Signature longer than 4095 bytes")
    out += U16.pack((p.sign_type << 12) | len(p.signature)) + p.signature


def _parse_v(r: Reader) -> Verification:
    buf, p = r.buf, r.pos
    if p >= r.end:
        raise r.fail("truncated Auth alg: need 1 byte, have 0")
    alg = _MAC_ALGS.get(buf[p])
    if alg is None:
        raise r.fail(f"unknown MacAlg value {buf[p]}", ErrNo.INVALID_MAC)
    n = _MAC_LEN[alg]
    q = p + 1 + n
    if q > r.end:
        raise r.fail(f"truncated Ver data: need {n} bytes, have {r.end - p - 1}", at=p + 1)
    r.pos = q
    return _mk_v(alg, buf[p + 1 : q])


def _serialize_v(out: bytearray, p: Verification) -> None:
    check(len(p.mac) == p.mac_alg.mac_len, "V MAC length does not match Auth alg")
    out.append(p.mac_alg)
    out += p.mac


def _parse_sp(r: Reader) -> SecurityPolicy:
    policy_no = r.u8("Policy no")
    prot = r.u8("Prot type")
    sub = r.sub(r.u16("Policy param length"), "Policy params")
    params = []
    while sub.pos < sub.end:
        ptype = sub.u8("policy param type")
        params.append(PolicyParam(ptype, sub.take(sub.u8("policy param length"), "param value")))
    r.pos = sub.end
    return SecurityPolicy(policy_no, prot, tuple(params))


def _serialize_sp(out: bytearray, p: SecurityPolicy) -> None:
    body = bytearray()
    for prm in p.params:
        body.append(fit_u8(prm.type, "policy param type"))
        body += len8(prm.value, "policy param value") + prm.value
    out += bytes((fit_u8(p.policy_no, "Policy no"), fit_u8(p.prot_type, "Prot type")))
    out += len16(bytes(body), "Policy params") + body


def _parse_err(r: Reader) -> ErrorPayload:
    err_no = _open(_ERR_NOS, r.u8("Error no"))
    return _mk_err(err_no, r.u16("ERR reserved"))


def _serialize_err(out: bytearray, p: ErrorPayload) -> None:
    check(0 <= p.reserved <= 0xFFFF, "ERR reserved does not fit in 16 bits")
    out += _bytes2(p.err_no, None, "Error no")
    out += U16.pack(p.reserved)


def _parse_ext(r: Reader) -> GeneralExtension:
    ext_type = r.u8("Extension type")
    return GeneralExtension(ext_type, r.take(r.u16("Extension length"), "Extension data"))


def _serialize_ext(out: bytearray, p: GeneralExtension) -> None:
    out.append(fit_u8(p.ext_type, "Extension type"))
    out += len16(p.data, "Extension data") + p.data


def parse_nested(r: Reader, what: str) -> tuple[Payload, ...] | None:
    """TP Data / Initiator Data: length(2) || [First Payload(1) || payloads]."""
    buf, p, end = r.buf, r.pos, r.end
    if p + 2 > end:
        raise r.fail(f"truncated {what} length: need 2 bytes, have {end - p}")
    n = (buf[p] << 8) | buf[p + 1]
    q = p + 2 + n
    if n == 0:
        r.pos = q
        return None
    if q > end:
        raise r.fail(f"truncated {what}: need {n} bytes, have {end - p - 2}", at=p + 2)
    sub = Reader(buf, p + 3, q, r.base)
    sub.budget = r.budget
    payloads, r.pos = parse_chain(sub, buf[p + 2], NESTED)
    r.budget = sub.budget
    return tuple(payloads)


def serialize_nested(out: bytearray, payloads: tuple[Payload, ...] | None, what: str) -> None:
    if payloads is None:
        out += b"\x00\x00"
        return
    for p in payloads:
        if type(p) in (TicketPolicy, Ticket):
            raise MikeyError(f"{what} may not contain TP or TICKET", -1, ErrNo.UNSPECIFIED)
    body = bytearray()
    first = serialize_chain(body, payloads)
    data = bytes((first,)) + bytes(body)
    out += len16(data, what) + data


_TP_FLAGS: dict[int, TpFlags] = {}


def _parse_tp_common(r: Reader) -> TicketPolicy:
    buf, p = r.buf, r.pos
    if p + 7 > r.end:
        raise r.fail(f"truncated Ticket Policy: need 7 bytes, have {r.end - p}")
    w = (buf[p + 4] << 16) | (buf[p + 5] << 8) | buf[p + 6]
    prf_func = _PRF_FUNCS.get(w >> 17)
    if prf_func is None:
        raise r.fail(f"unknown PrfFunc value {w >> 17}", ErrNo.INVALID_PRF, p + 4)
    bits = (w >> 5) & 0xFFF
    flags = _TP_FLAGS.get(bits)
    if flags is None:  # IntFlag(value) is slow: keep each of the 4096 values once
        flags = _TP_FLAGS[bits] = TpFlags(bits)
    r.pos = p + 7
    payloads = parse_nested(r, "TP Data")
    return _mk_tp((buf[p] << 8) | buf[p + 1], buf[p + 2], buf[p + 3], prf_func, flags,
                  payloads, w & 0x1F)  # fmt: skip


def _serialize_tp(out: bytearray, p: TicketPolicy) -> None:
    check(0 <= p.ticket_type <= 0xFFFF, "Ticket Type does not fit in 16 bits")
    check(0 <= p.reserved <= 0x1F, "TP Res does not fit in 5 bits")
    check(0 <= int(p.flags) <= 0xFFF, "TP flags do not fit in 12 bits")
    w = (p.prf_func << 17) | (int(p.flags) << 5) | p.reserved
    out += U16.pack(p.ticket_type)
    out += bytes((fit_u8(p.subtype, "Subtype"), fit_u8(p.version, "Version")))
    out += bytes((w >> 16, (w >> 8) & 0xFF, w & 0xFF))
    serialize_nested(out, p.payloads, "TP Data")


def parse_ticket(r: Reader) -> Ticket:
    policy = _parse_tp_common(r)
    buf, p = r.buf, r.pos
    if p + 2 > r.end:
        raise r.fail(f"truncated Ticket Data length: need 2 bytes, have {r.end - p}")
    n = (buf[p] << 8) | buf[p + 1]
    q = p + 2 + n
    if q > r.end:
        raise r.fail(f"truncated Ticket Data: need {n} bytes, have {r.end - p - 2}", at=p + 2)
    r.pos = q
    return _mk_ticket(policy, buf[p + 2 : q], parse_nested(r, "Initiator Data"))


def serialize_ticket(out: bytearray, p: Ticket) -> None:
    _serialize_tp(out, p.policy)
    out += len16(p.ticket_data, "Ticket Data") + p.ticket_data
    serialize_nested(out, p.initiator_data, "Initiator Data")


PARSERS: dict[int, Callable[[Reader], Payload]] = {
    PayloadType.KEMAC: _parse_kemac,
    PayloadType.PKE: _parse_pke,
    PayloadType.DH: _parse_dh,
    PayloadType.T: _parse_t,
    PayloadType.ID: _parse_id,
    PayloadType.CERT: _parse_cert,
    PayloadType.CHASH: _parse_chash,
    PayloadType.V: _parse_v,
    PayloadType.SP: _parse_sp,
    PayloadType.RAND: _parse_rand,
    PayloadType.ERR: _parse_err,
    PayloadType.TR: _parse_tr,
    PayloadType.IDR: _parse_idr,
    PayloadType.RANDR: _parse_randr,
    PayloadType.TP: _parse_tp_common,
    PayloadType.TICKET: parse_ticket,
    PayloadType.GENERAL_EXT: _parse_ext,
}

SERIALIZERS: dict[type, Callable[[bytearray, object], None]] = {
    Kemac: _serialize_kemac,  # type: ignore[dict-item]
    Pke: _serialize_pke,  # type: ignore[dict-item]
    Dh: _serialize_dh,  # type: ignore[dict-item]
    Signature: _serialize_sign,  # type: ignore[dict-item]
    Timestamp: _serialize_t,  # type: ignore[dict-item]
    Identity: _serialize_id,  # type: ignore[dict-item]
    Certificate: _serialize_cert,  # type: ignore[dict-item]
    CertHash: _serialize_chash,  # type: ignore[dict-item]
    Verification: _serialize_v,  # type: ignore[dict-item]
    SecurityPolicy: _serialize_sp,  # type: ignore[dict-item]
    Rand: _serialize_rand,  # type: ignore[dict-item]
    ErrorPayload: _serialize_err,  # type: ignore[dict-item]
    RoleTimestamp: _serialize_tr,  # type: ignore[dict-item]
    RoleIdentity: _serialize_idr,  # type: ignore[dict-item]
    RoleRand: _serialize_randr,  # type: ignore[dict-item]
    TicketPolicy: _serialize_tp,  # type: ignore[dict-item]
    Ticket: serialize_ticket,  # type: ignore[dict-item]
    GeneralExtension: _serialize_ext,  # type: ignore[dict-item]
}

_ENCODERS = {cls: (int(t), SERIALIZERS[cls]) for cls, t in PAYLOAD_TYPES.items()}
TOP_LEVEL = frozenset(int(t) for t in PayloadType) - {PayloadType.LAST, PayloadType.KEY_DATA}
NESTED = TOP_LEVEL - {PayloadType.TP, PayloadType.TICKET}
_NESTING = frozenset({PayloadType.TP, PayloadType.TICKET})  # payloads holding nested chains


def parse_chain(
    r: Reader, np: int, allowed: frozenset[int], offsets: list[int] | None = None
) -> tuple[list[Payload], int]:
    """Parse payloads from ``r.pos`` to ``r.end`` starting with type ``np``; the chain must end
    (Next Payload 0, or SIGN) exactly at ``r.end``.  Returns (payloads, end offset)."""
    payloads: list[Payload] = []
    append = payloads.append
    parsers = PARSERS
    buf, end = r.buf, r.end
    budget = r.budget  # kept local; handed to the nested chains of TP / TICKET and back
    while np:
        if np not in allowed:
            if np in TOP_LEVEL or np == PayloadType.KEY_DATA:
                raise r.fail(f"payload type {np} not allowed here")
            raise r.fail(f"unknown payload type {np}: its length cannot be known")
        if not budget:
            raise r.fail("more payloads than this message may carry before it is authenticated")
        budget -= 1
        pos = r.pos
        if offsets is not None:
            offsets.append(pos)
        if np == PayloadType.SIGN:
            append(_parse_sign(r))
            break
        if pos >= end:
            raise r.fail("truncated Next Payload: need 1 byte, have 0")
        r.pos = pos + 1
        r.budget = budget  # TP / TICKET spend it on their nested chains
        append(parsers[np](r))
        budget = r.budget
        np = buf[pos]
    r.budget = budget
    if r.pos != end:
        raise r.fail(f"{end - r.pos} bytes after the last payload")
    return payloads, r.pos


def serialize_chain(out: bytearray, payloads: Iterable[Payload]) -> int:
    """Append payloads, each after the Next Payload byte naming its successor (0 after the last;
    SIGN has none and must be last); return the type of the first one (0 if none)."""
    first = -1
    np_at = -1  # where the previous payload's Next Payload byte is (-1: none)
    for p in payloads:
        entry = _ENCODERS.get(type(p))
        if entry is None:
            raise MikeyError(f"{type(p).__name__} is not a MIKEY payload", -1, ErrNo.UNSPECIFIED)
        t, serialize = entry
        if np_at >= 0:
            out[np_at] = t
        elif first < 0:
            first = t
        else:
            raise MikeyError("SIGN must be the last payload", -1, ErrNo.UNSPECIFIED)
        if t == PayloadType.SIGN:
            np_at = -1
        else:
            np_at = len(out)
            out.append(0)
        serialize(out, p)
    return max(first, 0)


# --- key data sub-payloads (plaintext of KEMAC Encr data) ---------------------------------------


def parse_key_data(data: bytes, base: int = 0) -> tuple[KeyData, ...]:
    """Parse the key-data sub-payload chain (Next Payload 20 between, 0 after the last)."""
    r = Reader(data, base=base)
    if not data:
        return ()
    keys = []
    while True:
        start = r.pos
        np = r.u8("key data Next Payload")
        b = r.u8("key data Type/KV")
        ktype = _enum(KeyDataType, b >> 4, r, ErrNo.UNSPECIFIED, 1)
        kv_type = _enum(KvType, b & 0x0F, r, ErrNo.UNSPECIFIED, 1)
        key = r.take(r.u16("Key data len"), "Key data")
        salt = r.take(r.u16("Salt len"), "Salt data") if ktype.has_salt else b""
        keys.append(KeyData(ktype, key, salt, _parse_kv(r, kv_type)))
        if np == 0:
            break
        if np != PayloadType.KEY_DATA:
            raise r.fail(f"payload type {np} inside KEMAC key data", at=start)
    if r.pos != r.end:
        raise r.fail(f"{r.end - r.pos} bytes after the last key data sub-payload")
    return tuple(keys)


def serialize_key_data(keys: Iterable[KeyData]) -> bytes:
    items = list(keys)
    out = bytearray()
    for i, k in enumerate(items):
        if k.salt and not k.key_type.has_salt:
            raise MikeyError(f"{k.key_type.name} carries no salt", -1, ErrNo.UNSPECIFIED)
        out.append(PayloadType.KEY_DATA if i + 1 < len(items) else 0)
        out.append((k.key_type << 4) | _kv_type(k.kv))
        out += len16(k.key, "Key data") + k.key
        if k.key_type.has_salt:
            out += len16(k.salt, "Salt data") + k.salt
        _serialize_kv(out, k.kv)
    return bytes(out)


# --- base-ticket Ticket Data (RFC 6043 App. A) ---------------------------------------------------


def parse_ticket_data(data: bytes, base: int = 0, *, max_payloads: int | None = None) -> TicketData:
    r = Reader(data, base=base)
    if max_payloads is not None:
        r.budget = max_payloads
    np = r.u8("THDR Next Payload")
    thdr = TicketHeader(r.take(r.u16("THDR Data length"), "THDR Data"))
    payloads, _ = parse_chain(r, np, NESTED)
    return TicketData(thdr, tuple(payloads))


def serialize_ticket_data(td: TicketData) -> bytes:
    body = bytearray()
    first = serialize_chain(body, td.payloads)
    return bytes((first,)) + len16(td.thdr.data, "THDR Data") + td.thdr.data + bytes(body)


__all__ = [
    "NESTED",
    "PARSERS",
    "SERIALIZERS",
    "TOP_LEVEL",
    "parse_chain",
    "parse_header",
    "parse_key_data",
    "parse_nested",
    "parse_ticket",
    "parse_ticket_data",
    "serialize_chain",
    "serialize_header",
    "serialize_key_data",
    "serialize_nested",
    "serialize_ticket",
    "serialize_ticket_data",
]
