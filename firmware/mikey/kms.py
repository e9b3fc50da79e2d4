"""KMS-side building blocks (RFC 6043 4.2.1, 4.2.3, 5.4, 6.2.1, 12.1): the node's core composes
these.

Rules and invariants:
- Nothing here decides policy (who may get a ticket, replay, clock); it only checks and builds
  bytes exactly as RFC 6043 says.  Time and randomness (T values, RANDs, MPK/TGK, SPIs) come in.
- Initial-message V (REQUEST_INIT_PSK / RESOLVE_INIT_PSK) is verified with K1 from the PSK over
  the received bytes || Identity_i|r || Identity_kms (either reading of spec Q6, see
  message.identity_candidates).
- ``check_rand_strength``: the RANDs keying a message are each at least 16 bytes (RFC 3830 6.11,
  SHOULD; our profile refuses shorter) and together at least as long as the longest key they
  protect with (RFC 6043 12.1, MUST).  No ERR number names this: Unspecified (12).
- Responses copy version, PRF func, CSB ID, #CS and map type from the request, set V=0, carry the
  caller's fresh T, a KEMAC with NULL MAC encrypted with K2 keys (AES-CM IV from the response's T,
  spec Q4), and a V keyed with K2 over response || complete request.  The KEMAC encryption and
  the V MAC default to the strength of the HDR PRF func, and a mix of 256-bit and weaker
  algorithms, keys under 128 bits or longer keys under 128-bit encryption are refused (12.1).
- Every key the KMS issues can carry its SPI (KV type SPI; 6.2.1: "An SPI (or MKI) MUST be
  specified for each key"): ``mpki_spi``, ``mpkr_spi`` and ``key_spis`` (one per session key);
  a RESOLVE_RESP repeats what the ticket holds unless told otherwise.  A forked key keeps the SPI
  of the key it was forked from.
- REQUEST_RESP KEMAC = MPKi || [MPKr (when I)] || keys; RESOLVE_RESP KEMAC = MPKi || [MPKr' (when
  I)] || keys with TGKs forked to TGK' (K7) and the modifier (IDRr, RANDRkms) in clear payloads;
  RANDRkms at least as long as the longest MPKr / TGK (12.1).
- Error messages (data type 6): HDR (version, PRF, CSB ID copied; V=0), fresh T, ERR..., {SP},
  [V keyed with the failed message's auth_key over the whole Error message].
"""

from __future__ import annotations

from collections.abc import Sequence

from firmware.mikey.codec import (
    KV_NULL,
    EmptyMap,
    ErrorPayload,
    Header,
    KeyData,
    KeyValidity,
    Payload,
    RoleIdentity,
    RoleRand,
    SecurityPolicy,
    Ticket,
    Timestamp,
    TpFlags,
    Verification,
)
from firmware.mikey.constants import (
    DataType,
    EncrAlg,
    ErrNo,
    IdRole,
    IdType,
    KeyDataType,
    MacAlg,
    RandRole,
)
from firmware.mikey.crypto import (
    KeySource,
    check_mac,
    check_strength,
    compute_mac,
    encr_for,
    fork_mpkr,
    mac_for,
    message_keys,
    vr_auth_key,
)
from firmware.mikey.errors import MikeyError
from firmware.mikey.message import Message, encode
from firmware.mikey.ticket import OpenedTicket
from firmware.mikey.transfer import (
    FORKABLE,
    encrypt_kemac,
    fork_keys,
    message_rands,
    transfer_ticket,
    verify_v,
)

MIN_RAND_LEN = 16  # RFC 3830 6.11: "RAND len ... It SHOULD be at least 16."


def sign_message(header: Header, payloads: Sequence[Payload], auth_key: bytes, mac_alg: MacAlg,
                 appended: bytes = b"") -> bytes:  # fmt: skip
    """Encode HDR + payloads + V and fill V's MAC over the encoding (minus MAC) || ``appended``."""
    n = mac_alg.mac_len
    raw = encode(Message(header, (*payloads, Verification(mac_alg, bytes(n)))))
    body = raw[: len(raw) - n]
    return body + compute_mac(mac_alg, auth_key, body + appended)


def verify_initial_psk(
    msg: Message, psk: KeySource, *, peer_identity: bytes | None = None, kms_identity: bytes | None
) -> bytes:
    """Verify the V of a REQUEST_INIT_PSK / RESOLVE_INIT_PSK with K1 from ``psk``; returns the
    auth_key.  ``peer_identity`` / ``kms_identity`` are used when IDRi|IDRr / IDRkms are absent."""
    dt = msg.header.data_type
    if dt == DataType.REQUEST_INIT_PSK:
        return verify_v(msg, psk, initiator=peer_identity, kms=kms_identity)
    if dt == DataType.RESOLVE_INIT_PSK:
        return verify_v(msg, psk, responder=peer_identity, kms=kms_identity)
    raise MikeyError(f"data type {dt} is not a PSK initial message", -1, ErrNo.INVALID_DT)


def response_header(request: Message, data_type: DataType) -> Header:
    h = request.header
    return Header(data_type, h.csb_id, h.cs_map, h.prf_func, False, h.version)


def check_rand_strength(
    msg: Message,
    *key_lengths: int,
    initial: Message | None = None,
    g_flag: bool = False,
) -> None:
    """Refuse (MikeyError, ERR Unspecified, offset of the RAND) the RANDs that key ``msg`` when one
    is shorter than 16 bytes (RFC 3830 6.11: "It SHOULD be at least 16") or their lengths sum to
    less than the longest of ``key_lengths`` (RFC 6043 12.1: "the sum of the lengths of RANDRi
    and RANDRr MUST at least be equal to the size of the longest pre-shared key/envelope key/
    MPK/TGK/GTGK") - for a REQUEST_INIT / RESOLVE_INIT, the PSK's length."""
    rand_i, rand_r = message_rands(msg, initial, g_flag=g_flag)
    rands = [r for r in (rand_i, rand_r) if r is not None]
    at = next((msg.offsets[i] for i, p in enumerate(msg.payloads) if isinstance(p, RoleRand)
               and msg.raw), -1)  # fmt: skip
    if not rands:
        raise MikeyError("no RAND keys this message", at, ErrNo.UNSPECIFIED)
    if min(len(r) for r in rands) < MIN_RAND_LEN:
        raise MikeyError(f"a RAND shorter than {MIN_RAND_LEN} bytes", at, ErrNo.UNSPECIFIED)
    longest = max(key_lengths, default=0)
    if sum(len(r) for r in rands) < longest:
        raise MikeyError(f"RANDs shorter than the {longest}-byte key they protect", at,
                         ErrNo.UNSPECIFIED)  # fmt: skip


def _kms_response(
    request: Message,
    data_type: DataType,
    psk: KeySource,
    *,
    t: Timestamp,
    before_kemac: Sequence[Payload],
    kemac_keys: Sequence[KeyData],
    after_kemac: Sequence[Payload],
    encr_alg: EncrAlg | None,
    mac_alg: MacAlg | None,
) -> bytes:
    if not request.raw:
        raise MikeyError("the request must be the received message", -1)
    header = response_header(request, data_type)
    prf = header.prf_func
    encr = encr_for(prf) if encr_alg is None else encr_alg
    mac = mac_for(prf) if mac_alg is None else mac_alg
    check_strength(prf, encr_alg=encr, mac_alg=mac, key_lengths=tuple(map(_key_len, kemac_keys)))
    rand_i, rand_r = message_rands(request)
    mk = message_keys(prf, psk, header.csb_id, response=True, rand_i=rand_i, rand_r=rand_r,
                      encr_alg=encr, mac_alg=mac)  # fmt: skip
    kemac = encrypt_kemac(kemac_keys, mk, csb_id=header.csb_id, t=t, encr_alg=encr)
    payloads = [t, *before_kemac, kemac, *after_kemac]
    return sign_message(header, payloads, mk.auth_key, mac, request.raw)


def _key_len(k: KeyData) -> int:
    return len(k.key)


def _named(keys: Sequence[KeyData], spis: Sequence[bytes] | None) -> list[KeyData]:
    if spis is None:
        return list(keys)
    if len(spis) != len(keys):
        raise MikeyError(f"{len(spis)} SPIs for {len(keys)} session keys", -1)
    return [k.with_spi(spi) for k, spi in zip(keys, spis, strict=True)]


def idr(role: IdRole, data: bytes, id_type: IdType = IdType.URI) -> RoleIdentity:
    """An IDR payload (RFC 6043 6.6); identities are URIs unless said otherwise."""
    return RoleIdentity(role, id_type, data)


def build_request_resp(
    request: Message,
    psk: KeySource,
    *,
    t: Timestamp,
    ticket: Ticket,
    mpki: bytes,
    mpkr: bytes | None,
    session_keys: Sequence[KeyData] = (),
    mpk_kv: KeyValidity = KV_NULL,
    mpki_spi: bytes | None = None,
    mpkr_spi: bytes | None = None,
    key_spis: Sequence[bytes] | None = None,
    kms_identity: bytes | None = None,
    encr_alg: EncrAlg | None = None,
    mac_alg: MacAlg | None = None,
) -> bytes:
    """REQUEST_RESP = HDR, T, [IDRkms], TICKET, KEMAC(MPKi || [MPKr] || keys), V (RFC 6043
    4.2.1.5).  Pass ``mpkr`` when the granted policy has the I flag (the Initiator forks).
    ``mpki_spi`` / ``mpkr_spi`` / ``key_spis`` name the keys (KV type SPI, 6.2.1); without them a
    key keeps ``mpk_kv`` / its own KV."""
    if request.header.data_type not in (DataType.REQUEST_INIT_PSK, DataType.REQUEST_INIT_PK):
        raise MikeyError("not a REQUEST_INIT", -1, ErrNo.INVALID_DT)
    kd = [KeyData(KeyDataType.MPK, mpki, b"", mpk_kv).with_spi(mpki_spi)]
    if mpkr is not None:
        kd.append(KeyData(KeyDataType.MPK, mpkr, b"", mpk_kv).with_spi(mpkr_spi))
    before: list[Payload] = []
    if kms_identity is not None:
        before.append(idr(IdRole.IDRkms, kms_identity))
    before.append(ticket)
    return _kms_response(request, DataType.REQUEST_RESP, psk, t=t, before_kemac=before,
                         kemac_keys=[*kd, *_named(session_keys, key_spis)], after_kemac=(),
                         encr_alg=encr_alg, mac_alg=mac_alg)  # fmt: skip


def build_resolve_resp(
    request: Message,
    psk: KeySource,
    *,
    t: Timestamp,
    opened: OpenedTicket,
    responder_identity: bytes | None = None,
    rand_kms: bytes | None = None,
    kms_identity: bytes | None = None,
    mpki_spi: bytes | None = None,
    mpkr_spi: bytes | None = None,
    key_spis: Sequence[bytes] | None = None,
    encr_alg: EncrAlg | None = None,
    mac_alg: MacAlg | None = None,
) -> bytes:
    """RESOLVE_RESP = HDR, T, [IDRkms], KEMAC(MPKi || [MPKr'] || keys), [IDRr], [RANDRkms], V.
    With the I flag, ``responder_identity`` (the identity that answered) and a fresh
    ``rand_kms`` (at least as long as MPKr and every TGK, 12.1) are required; MPKr' and TGK' are
    derived with K7.  The keys carry the SPIs the ticket holds (the MPK's for MPKi and MPKr')
    unless ``mpki_spi`` / ``mpkr_spi`` / ``key_spis`` say otherwise."""
    if request.header.data_type not in (DataType.RESOLVE_INIT_PSK, DataType.RESOLVE_INIT_PK):
        raise MikeyError("not a RESOLVE_INIT", -1, ErrNo.INVALID_DT)
    kd = [KeyData(KeyDataType.MPK, opened.mpki, b"", opened.mpk_kv).with_spi(mpki_spi)]
    keys: Sequence[KeyData] = _named(opened.session_keys, key_spis)
    after: list[Payload] = []
    if opened.flags & TpFlags.I:
        if responder_identity is None or rand_kms is None:
            raise MikeyError("key forking needs the responder identity and RANDRkms", -1)
        longest = max((len(opened.mpkr), *(len(k.key) for k in keys if k.key_type in FORKABLE)))
        if len(rand_kms) < max(longest, MIN_RAND_LEN):
            raise MikeyError("RANDRkms MUST at least be as long as the longest MPKr/TGK", -1,
                             ErrNo.UNSPECIFIED)  # fmt: skip
        func = opened.policy.prf_func
        mpkr_forked = fork_mpkr(func, opened.mpkr, responder_identity, rand_kms)
        kd.append(KeyData(KeyDataType.MPK, mpkr_forked, b"", opened.mpk_kv).with_spi(mpkr_spi))
        keys = fork_keys(opened.policy, keys, responder_identity, rand_kms)
        after = [idr(IdRole.IDRr, responder_identity), RoleRand(RandRole.RANDRkms, rand_kms)]
    elif responder_identity is not None:
        after = [idr(IdRole.IDRr, responder_identity)]
    before: list[Payload] = []
    if kms_identity is not None:
        before.append(idr(IdRole.IDRkms, kms_identity))
    return _kms_response(request, DataType.RESOLVE_RESP, psk, t=t, before_kemac=before,
                         kemac_keys=[*kd, *keys], after_kemac=after, encr_alg=encr_alg,
                         mac_alg=mac_alg)  # fmt: skip


def build_error(
    failed: Header,
    errors: Sequence[ErrNo],
    *,
    t: Timestamp,
    auth_key: bytes | None = None,
    mac_alg: MacAlg = MacAlg.HMAC_SHA_1_160,
    policies: Sequence[SecurityPolicy] = (),
) -> bytes:
    """MIKEY Error message (RFC 6043 5.4): HDR(data type 6; version, PRF func, CSB ID copied;
    V=0; no crypto sessions), T, (ERR), {SP}, [V with the failed message's auth_key].  Without
    ``auth_key`` (e.g. authentication failed) the message has no V."""
    if not errors:
        raise MikeyError("an Error message needs at least one ERR", -1)
    header = Header(DataType.ERROR, failed.csb_id, EmptyMap(), failed.prf_func, False,
                    failed.version)  # fmt: skip
    payloads: list[Payload] = [t, *(ErrorPayload(e) for e in errors), *policies]
    if auth_key is None:
        return encode(Message(header, tuple(payloads)))
    return sign_message(header, payloads, auth_key, mac_alg)


def verify_error(msg: Message, auth_key: bytes) -> None:
    """Verify an authenticated Error message (V over the whole message, nothing appended)."""
    v = msg.payloads[-1] if msg.payloads else None
    if msg.header.data_type != DataType.ERROR or not isinstance(v, Verification):
        raise MikeyError("not an authenticated Error message", -1, ErrNo.INVALID_DT)
    check_mac(v.mac_alg, auth_key, msg.raw[: len(msg.raw) - len(v.mac)], v.mac)


def verify_initiator_data(init: Message, mpkr: bytes) -> None:
    """With key forking: verify Vr in the TICKET's Initiator Data with K4 from the unforked MPKr
    (RFC 6043 6.10, 4.2.3.4); Vr covers the Initiator Data field except Vr's MAC bytes."""
    ticket = transfer_ticket(init)
    idata = ticket.initiator_data
    if not idata or len(idata) < 2 or not isinstance(idata[-1], Verification):
        raise MikeyError("key forking: Initiator Data (Vi, Vr) missing", -1, ErrNo.AUTH_FAILURE)
    raw = init.ticket_bytes()
    vr = idata[-1]
    field = raw[len(raw) - _idl(raw) :]
    key = vr_auth_key(ticket.policy.prf_func, mpkr, vr.mac_alg)
    check_mac(vr.mac_alg, key, field[: len(field) - len(vr.mac)], vr.mac)


def _idl(ticket_raw: bytes) -> int:
    """Initiator Data length of a received TICKET payload."""
    p = 8
    p += 2 + int.from_bytes(ticket_raw[p : p + 2], "big")
    p += 2 + int.from_bytes(ticket_raw[p : p + 2], "big")
    return int.from_bytes(ticket_raw[p : p + 2], "big")
