"""The MIKEY base ticket (RFC 6043 App. A) and Ticket Policy rules (RFC 6043 6.10).

Rules and invariants:
- Ticket Type 1 / subtype 1 / version 1 only; anything else is MikeyError(INVALID_TICKET).
- Ticket Data = THDR, T, RAND, KEMAC, [IDRpsk], V.  THDR Data is opaque to MIKEY: the node puts
  its TPK key version there; ``peek_ticket`` reads it back *before* verification so the caller can
  pick the TPK version, and nothing else from an unverified ticket may be trusted.
- Ticket keys come from the TPK through a ``KeySource`` (bytes, or the HSM's PRF port) with the
  Ticket Policy PRF (K5); the KEMAC IV uses the ticket's T and CSB ID 0xFFFFFFFF (A.1).
- ``seal_ticket`` names the MPK and session keys with SPIs when given (6.2.1), takes a RAND at
  least as long as the TPK and MPK (12.1) and never mixes 256-bit with weaker algorithms; the
  parsers of an unverified ticket stop at ``TICKET_MAX_PAYLOADS`` / ``TICKET_DATA_MAX_PAYLOADS``.
- The ticket V covers the TICKET payload except its Next Payload byte, the Initiator Data length
  and data, and the MAC bytes; ``open_ticket`` verifies it over the received payload bytes.
- ``check_policy`` enforces the flag consistency rules: not D => L, G => F, not G => H,
  not H => G, I => E, K => D, M => F, and F when I and a TGK is in the ticket.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from firmware.mikey.buffer import Reader
from firmware.mikey.codec import (
    KV_NULL,
    Kemac,
    KeyData,
    KeyValidity,
    Rand,
    RoleIdentity,
    RoleTimestamp,
    Ticket,
    TicketData,
    TicketHeader,
    TicketPolicy,
    Timestamp,
    TpFlags,
    Verification,
    parse_key_data,
    parse_ticket_data,
    serialize_key_data,
    serialize_ticket_data,
)
from firmware.mikey.constants import (
    EncrAlg,
    ErrNo,
    IdRole,
    IdType,
    KeyDataType,
    MacAlg,
    TicketType,
    TsRole,
    TsType,
)
from firmware.mikey.crypto import (
    KeySource,
    check_mac,
    check_strength,
    compute_mac,
    encr_for,
    kemac_crypt,
    mac_for,
    mpk_split,
    ticket_keys,
)
from firmware.mikey.errors import MikeyError
from firmware.mikey.message import ticket_mac_input
from firmware.mikey.wire import parse_ticket, serialize_ticket

TICKET_CSB_ID = 0xFFFFFFFF
MIN_TICKET_RAND = 16  # RFC 3830 6.11: "It SHOULD be at least 16"
TICKET_MAX_PAYLOADS = 128  # TP Data (IDRr per responder) and Initiator Data, before the MAC check
TICKET_DATA_MAX_PAYLOADS = 16  # base Ticket Data is THDR, T, RAND, KEMAC, [IDRpsk], V
TGK_TYPES = frozenset({KeyDataType.TGK, KeyDataType.TGK_SALT})


def check_policy(flags: TpFlags, *, has_tgk: bool = False) -> None:
    """Raise MikeyError(INVALID_TPPAR) if the TP flags break a consistency rule of RFC 6043 6.10."""
    f = flags
    rules = (
        (not f & TpFlags.D and not f & TpFlags.L, "not D requires L"),
        (bool(f & TpFlags.G) and not f & TpFlags.F, "G requires F"),
        (not f & TpFlags.G and not f & TpFlags.H, "not G requires H"),
        (bool(f & TpFlags.I) and not f & TpFlags.E, "I (key forking) requires E"),
        (bool(f & TpFlags.K) and not f & TpFlags.D, "K requires D"),
        (bool(f & TpFlags.M) and not f & TpFlags.F, "M requires F"),
        (bool(f & TpFlags.I) and has_tgk and not f & TpFlags.F, "I with a TGK requires F"),
    )
    for broken, why in rules:
        if broken:
            raise MikeyError(f"inconsistent Ticket Policy flags: {why}", -1, ErrNo.INVALID_TPPAR)


def ntp_seconds(ts_type: TsType, value: bytes) -> int:
    """Seconds since 1900 of an NTP-UTC/NTP/NTP-UTC-32 value, with the RFC 4330 era rule
    (first bit 0 => 2036-2104), so comparisons work across the 2036 wrap."""
    if ts_type is TsType.COUNTER:
        raise MikeyError("COUNTER is not a time", -1, ErrNo.INVALID_TS)
    secs = int.from_bytes(value[:4], "big")
    return secs if secs & 0x80000000 else secs + (1 << 32)


def ntp_bytes(ntp_secs: int, ts_type: TsType = TsType.NTP_UTC, fraction: int = 0) -> bytes:
    """Encode NTP seconds (since 1900, possibly past 2036) as a TS value."""
    secs = ntp_secs & 0xFFFFFFFF
    if ts_type is TsType.NTP_UTC_32:
        return secs.to_bytes(4, "big")
    return secs.to_bytes(4, "big") + (fraction & 0xFFFFFFFF).to_bytes(4, "big")


def within_validity(policy: TicketPolicy, now_ntp: int) -> bool:
    """True if ``now_ntp`` (NTP seconds) lies in [TRs, TRe]; an omitted bound is unbounded."""
    trs, tre = policy.tr(TsRole.TRs), policy.tr(TsRole.TRe)
    if trs is not None and now_ntp < ntp_seconds(trs.ts_type, trs.value):
        return False
    return not (tre is not None and now_ntp > ntp_seconds(tre.ts_type, tre.value))


@dataclass(frozen=True, slots=True)
class OpenedTicket:
    """A verified and decrypted base ticket."""

    policy: TicketPolicy
    thdr_data: bytes
    t: Timestamp
    rand: bytes
    mpk: bytes = field(repr=False)
    mpki: bytes = field(repr=False)
    mpkr: bytes = field(repr=False)
    session_keys: tuple[KeyData, ...] = field(repr=False)
    mpk_kv: KeyValidity = KV_NULL
    idr_psk: bytes | None = None

    @property
    def flags(self) -> TpFlags:
        return self.policy.flags

    @property
    def idr_i(self) -> bytes | None:
        ids = self.policy.idr(IdRole.IDRi)
        return ids[0].data if ids else None

    @property
    def idr_r(self) -> tuple[bytes, ...]:
        return tuple(p.data for p in self.policy.idr(IdRole.IDRr))

    @property
    def idr_kms(self) -> bytes | None:
        ids = self.policy.idr(IdRole.IDRkms)
        return ids[0].data if ids else None

    @property
    def trs(self) -> RoleTimestamp | None:
        return self.policy.tr(TsRole.TRs)

    @property
    def tre(self) -> RoleTimestamp | None:
        return self.policy.tr(TsRole.TRe)


def _require_base(policy: TicketPolicy) -> None:
    if (policy.ticket_type, policy.subtype, policy.version) != (TicketType.MIKEY_BASE_TICKET, 1, 1):
        raise MikeyError(
            f"ticket type {policy.ticket_type}/{policy.subtype}/{policy.version} not supported",
            -1,
            ErrNo.INVALID_TICKET,
        )


def _ticket_payload(raw: bytes) -> Ticket:
    if not raw:
        raise MikeyError("empty TICKET payload", 0, ErrNo.INVALID_TICKET)
    r = Reader(raw, 1)
    r.budget = TICKET_MAX_PAYLOADS  # peek_ticket parses before any MAC is checked
    t = parse_ticket(r)
    if r.pos != r.end:
        raise r.fail("bytes after the TICKET payload")
    return t


def ticket_raw(ticket: Ticket) -> bytes:
    """The bytes of a TICKET payload as a sender would send it (Next Payload byte 0)."""
    out = bytearray(b"\x00")
    serialize_ticket(out, ticket)
    return bytes(out)


def peek_ticket(raw: bytes, decoded: Ticket | None = None) -> tuple[TicketPolicy, TicketData]:
    """Parse a received TICKET payload WITHOUT verifying it (to read THDR data, e.g. the TPK
    version).  Nothing returned may be trusted until ``open_ticket`` succeeds.  ``decoded`` is the
    Ticket the message decoder already parsed from these same bytes (``raw`` is then not parsed
    again)."""
    t = _ticket_payload(raw) if decoded is None else decoded
    _require_base(t.policy)
    return t.policy, parse_ticket_data(t.ticket_data, max_payloads=TICKET_DATA_MAX_PAYLOADS)


def _parts(td: TicketData) -> tuple[Timestamp, Rand, Kemac, RoleIdentity | None, Verification]:
    t = next((p for p in td.payloads if isinstance(p, Timestamp)), None)
    rand = next((p for p in td.payloads if isinstance(p, Rand)), None)
    kemac = next((p for p in td.payloads if isinstance(p, Kemac)), None)
    psk = next(
        (p for p in td.payloads if isinstance(p, RoleIdentity) and p.role == IdRole.IDRpsk), None
    )
    v = td.payloads[-1] if td.payloads else None
    if t is None or rand is None or kemac is None or not isinstance(v, Verification):
        raise MikeyError("base ticket lacks T, RAND, KEMAC or a final V", -1, ErrNo.INVALID_TICKET)
    return t, rand, kemac, psk, v


def seal_ticket(
    policy: TicketPolicy,
    *,
    tpk: KeySource,
    thdr_data: bytes,
    t: Timestamp,
    rand: bytes,
    mpk: bytes,
    session_keys: Sequence[KeyData] = (),
    mpk_kv: KeyValidity = KV_NULL,
    mpk_spi: bytes | None = None,
    key_spis: Sequence[bytes] | None = None,
    idr_psk: bytes | None = None,
    encr_alg: EncrAlg | None = None,
    mac_alg: MacAlg | None = None,
) -> Ticket:
    """Build a MIKEY base ticket: KEMAC = E(encr_key_TPK, MPK || keys), V with auth_key_TPK.
    ``mpk_spi`` / ``key_spis`` (one per session key) name the keys (KV type SPI, RFC 6043 6.2.1).
    The ticket RAND must be at least as long as the MPK and a TPK given as bytes (12.1); the
    algorithms default to the strength of the Ticket Policy PRF func and are never mixed."""
    _require_base(policy)
    prf = policy.prf_func
    encr = encr_for(prf) if encr_alg is None else encr_alg
    mac = mac_for(prf) if mac_alg is None else mac_alg
    if mac is MacAlg.NULL:
        raise MikeyError("a ticket needs a MAC", -1, ErrNo.INVALID_MAC)
    keys = list(session_keys)
    if key_spis is not None:
        if len(key_spis) != len(keys):
            raise MikeyError(f"{len(key_spis)} SPIs for {len(keys)} session keys", -1)
        keys = [k.with_spi(spi) for k, spi in zip(keys, key_spis, strict=True)]
    mpk_data = KeyData(KeyDataType.MPK, mpk, b"", mpk_kv).with_spi(mpk_spi)
    lengths = (len(mpk), *(len(k.key) for k in keys))
    check_strength(prf, encr_alg=encr, mac_alg=mac, key_lengths=lengths)
    longest = max(len(mpk), len(tpk) if isinstance(tpk, bytes) else 0, MIN_TICKET_RAND)
    if len(rand) < longest:
        raise MikeyError("the ticket RAND MUST at least be as long as the longest of TPK and MPK",
                         -1, ErrNo.UNSPECIFIED)  # fmt: skip
    check_policy(policy.flags, has_tgk=any(k.key_type in TGK_TYPES for k in keys))
    tkeys = ticket_keys(prf, tpk, rand, encr, mac)
    plain = serialize_key_data([mpk_data, *keys])
    encr_data = kemac_crypt(encr, tkeys, TICKET_CSB_ID, t.as_64(), plain, decrypt=False)
    payloads: list[object] = [t, Rand(rand), Kemac(encr, encr_data)]
    if idr_psk is not None:
        payloads.append(RoleIdentity(IdRole.IDRpsk, IdType.BYTE_STRING, idr_psk))
    n = mac.mac_len
    payloads.append(Verification(mac, bytes(n)))
    td = TicketData(TicketHeader(thdr_data), tuple(payloads))  # type: ignore[arg-type]
    unsigned = Ticket(policy, serialize_ticket_data(td), None)
    cover = ticket_mac_input(ticket_raw(unsigned))[:-n]
    mac_bytes = compute_mac(mac, tkeys.auth_key, cover)
    return Ticket(policy, unsigned.ticket_data[:-n] + mac_bytes, None)


def open_ticket(
    raw: bytes, tpk: KeySource, *, peeked: tuple[TicketPolicy, TicketData] | None = None
) -> OpenedTicket:
    """Verify (V over the received TICKET bytes) and decrypt a base ticket; derive MPKi/MPKr.
    ``peeked`` is what ``peek_ticket`` returned for these same bytes (parsed once, not twice);
    the MAC is always checked over ``raw``."""
    policy, td = peek_ticket(raw) if peeked is None else peeked
    t, rand, kemac, psk, v = _parts(td)
    keys = ticket_keys(policy.prf_func, tpk, rand.value, kemac.encr_alg, v.mac_alg)
    check_mac(v.mac_alg, keys.auth_key, ticket_mac_input(raw)[: -len(v.mac) or None], v.mac)
    plain = kemac_crypt(
        kemac.encr_alg, keys, TICKET_CSB_ID, t.as_64(), kemac.encr_data, decrypt=True
    )
    kd = parse_key_data(plain)
    if not kd or kd[0].key_type is not KeyDataType.MPK:
        raise MikeyError("base ticket KEMAC does not start with an MPK", -1, ErrNo.INVALID_TICKET)
    check_policy(policy.flags, has_tgk=any(k.key_type in TGK_TYPES for k in kd[1:]))
    mpki, mpkr = mpk_split(policy.prf_func, kd[0].key, rand.value)
    return OpenedTicket(
        policy,
        td.thdr.data,
        t,
        rand.value,
        kd[0].key,
        mpki,
        mpkr,
        kd[1:],
        kd[0].kv,
        psk.data if psk else None,
    )
