"""Ticket Transfer protection and session keys (RFC 6043 4.2.2, 5.1, 5.5, 6.1.1, 8), shared by
the UE roles and the node's Xk key release.

Rules and invariants:
- Which RANDs key which message (RFC 6043 5.1.2): REQUEST_* (RANDRi, -), RESOLVE_* (-, RANDRr),
  TRANSFER_INIT (RANDRi, -), TRANSFER_RESP (RANDRi, RANDRr if the ticket's G flag).
- An initial message's V is keyed with K1 over the received bytes (minus the TICKET's Initiator
  Data for TRANSFER_INIT) followed by the identities of Table 5.2; both readings of spec Q6 verify
  (message.identity_candidates).  TRANSFER_RESP's V is keyed with MPKi, or MPKr' when the I flag
  (key forking) is set (K2), over the received TRANSFER_RESP followed by the complete received
  TRANSFER_INIT, whose version, PRF func and CSB ID it must repeat (4.2.2.3).
- Crypto sessions (4.2.2.3, 6.1.1): the TRANSFER_RESP's CS ID map, when there is one, says which
  crypto sessions both sides use - the Responder may add some and answers each with one policy,
  Session Data and an SPI; without a TRANSFER_RESP the TRANSFER_INIT's map says.  The SPI of a
  CS is the answer's, else the offer's.
- Key and salt lengths (RFC 3830 6.10.1, RFC 3711, RFC 6188): the SRTP policy a CS names gives
  the TEK length ("Session Encr. key length ... should also be seen as the Master key length")
  and the salt length ("Session Salt key length"); a policy number names the answer's own SP
  first, else the offer's ("the policy_no may refer to a SP payload in the initial message").
  Without a policy, or for what a policy leaves unset, the SRTP defaults: 16 and 14 bytes.
  An offer of several policies that disagree needs the TRANSFER_RESP to say which was chosen.
- Session keys (K3, HDR PRF): one TEK per CS from the first TGK/GTGK (TGK' when forked); RANDRi
  is used if H, RANDRr if G; the salt is the key data's salt when present, else derived
  (0x39A2C14B).  A key set of TEKs gives TEK i to CS i and must match the policy's length.
- UE-supplied keys (4.2.2.1, 4.2.2.3, 5.2, 8): a TRANSFER_INIT may carry its own KEMAC only when
  the ticket grants L, a TRANSFER_RESP only with M; such a KEMAC is opened with the encr_key and
  salt_key derived (K1 / K2) from MPKi, or MPKr' for a forked TRANSFER_RESP, and its keys - never
  forked (5.2) - replace the ticket's: the TRANSFER_RESP's over the TRANSFER_INIT's over the
  ticket's.  The node's KMS holds every MPK, so Xk releases the keys the media really uses.
- Forking (K7, TP PRF) changes MPKr and TGKs only; TEKs and GTGKs are never forked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from firmware.mikey.codec import (
    GenericIdMap,
    Kemac,
    KeyData,
    RoleIdentity,
    SecurityPolicy,
    SrtpIdMap,
    Ticket,
    TicketPolicy,
    Timestamp,
    TpFlags,
    Verification,
    parse_key_data,
    serialize_key_data,
)
from firmware.mikey.constants import (
    DataType,
    EncrAlg,
    ErrNo,
    IdRole,
    KeyDataType,
    MacAlg,
    PrfFunc,
    ProtType,
    RandRole,
    SrtpParam,
)
from firmware.mikey.crypto import (
    KeySource,
    MessageKeys,
    auth_key,
    fork_mpkr,
    fork_tgk,
    kemac_crypt,
    mac_matches,
    message_keys,
    tek,
    tek_salt,
)
from firmware.mikey.errors import MikeyError
from firmware.mikey.message import (
    INITIAL_TYPES,
    Message,
    appended_identities,
    coverage,
    identity_candidates,
    kemac_iv_t,
    mac_input,
)

TGK_LIKE = (KeyDataType.TGK, KeyDataType.TGK_SALT, KeyDataType.GTGK, KeyDataType.GTGK_SALT)
FORKABLE = (KeyDataType.TGK, KeyDataType.TGK_SALT)
TEK_TYPES = (KeyDataType.TEK, KeyDataType.TEK_SALT)
SRTP_MASTER_KEY_LEN = 16  # RFC 3711 8.2: AES_CM_128 master key, the default
SRTP_MASTER_SALT_LEN = 14  # RFC 3711 8.2: 112-bit master salt
MASTER_KEY_LENS = frozenset({16, 24, 32})  # AES-128 (RFC 3711), AES-192/256 (RFC 6188)
MAX_SALT_LEN = 32
_KEYED_BY_RANDRI = frozenset(
    {DataType.REQUEST_INIT_PSK, DataType.REQUEST_INIT_PK, DataType.TRANSFER_INIT}
)
_KEYED_BY_RANDRR = frozenset({DataType.RESOLVE_INIT_PSK, DataType.RESOLVE_INIT_PK})
_RESPONSES = frozenset({DataType.REQUEST_RESP, DataType.RESOLVE_RESP, DataType.TRANSFER_RESP})


@dataclass(frozen=True, slots=True)
class SessionKey:
    """TEK, salt and SPI of one crypto session (what Xk returns: CS ID, session key, salt)."""

    cs_id: int
    tek: bytes = field(repr=False)
    salt: bytes = field(repr=False)
    spi: bytes = b""


def message_rands(
    msg: Message, initial: Message | None = None, *, g_flag: bool = False
) -> tuple[bytes | None, bytes | None]:
    """(RANDRi, RANDRr) that key ``msg`` (RFC 6043 5.1.2); responses take RANDs from ``initial``."""
    dt = msg.header.data_type
    if dt in _KEYED_BY_RANDRI:
        return msg.randr(RandRole.RANDRi), None
    if dt in _KEYED_BY_RANDRR:
        return None, msg.randr(RandRole.RANDRr)
    if initial is None:
        raise MikeyError("response keys need the initial message", -1)
    if dt == DataType.REQUEST_RESP:
        return initial.randr(RandRole.RANDRi), None
    if dt == DataType.RESOLVE_RESP:
        return None, initial.randr(RandRole.RANDRr)
    if dt == DataType.TRANSFER_RESP:
        return initial.randr(RandRole.RANDRi), msg.randr(RandRole.RANDRr) if g_flag else None
    raise MikeyError(f"no key derivation for data type {dt}", -1, ErrNo.INVALID_DT)


def verify_v(
    msg: Message,
    inkey: KeySource,
    *,
    initial: Message | None = None,
    initiator: bytes | None = None,
    responder: bytes | None = None,
    kms: bytes | None = None,
    g_flag: bool = False,
) -> bytes:
    """Verify the final V of a received message keyed (K1/K2, HDR PRF) from ``inkey``; returns the
    auth_key (the Error message to answer with uses it).  Raises MikeyError(AUTH_FAILURE).
    An initial message verifies under either reading of spec Q6 (``identity_candidates``)."""
    v = msg.payloads[-1] if msg.payloads else None
    if not isinstance(v, Verification):
        raise MikeyError("message does not end with V", -1, ErrNo.AUTH_FAILURE)
    rand_i, rand_r = message_rands(msg, initial, g_flag=g_flag)
    if rand_i is None and rand_r is None:
        raise MikeyError("no RAND to derive the message keys from", -1, ErrNo.UNSPECIFIED)
    key = auth_key(
        msg.header.prf_func,
        inkey,
        msg.header.csb_id,
        response=msg.header.data_type in _RESPONSES,
        rand_i=rand_i,
        rand_r=rand_r,
        mac_alg=v.mac_alg,
    )
    if msg.header.data_type not in INITIAL_TYPES:
        if mac_matches(v.mac_alg, key, coverage(msg, initial=initial), v.mac):
            return key
    else:
        ids = appended_identities(msg, initiator=initiator, responder=responder, kms=kms)
        if mac_matches(v.mac_alg, key, mac_input(msg, ids), v.mac):
            return key  # ABSENT_IDENTITY, the reading we send: one MAC in the common case
        for ids in identity_candidates(msg, initiator=initiator, responder=responder, kms=kms)[1:]:
            if mac_matches(v.mac_alg, key, mac_input(msg, ids), v.mac):
                return key
    raise MikeyError("MAC verification failed", -1, ErrNo.AUTH_FAILURE)


def transfer_ticket(init: Message) -> Ticket:
    t = init.find(Ticket)
    if t is None:
        raise MikeyError("TRANSFER_INIT without TICKET", -1, ErrNo.INVALID_TICKET)
    return t


def verify_transfer_init(
    init: Message, mpki: bytes, *, initiator: bytes | None = None, responder: bytes | None = None
) -> None:
    """Verify TRANSFER_INIT's V with MPKi (Initiator Data excluded, identities appended; an
    omitted IDRi / IDRr may stand for the caller's value or the ticket's, spec Q6)."""
    if init.header.data_type != DataType.TRANSFER_INIT:
        raise MikeyError("not a TRANSFER_INIT", -1, ErrNo.INVALID_DT)
    verify_v(init, mpki, initiator=initiator, responder=responder)


def forked_mpkr_for(resp: Message, policy: TicketPolicy, mpkr: bytes) -> bytes:
    """MPKr' from the (IDRr, RANDRkms) modifier carried in a TRANSFER_RESP / RESOLVE_RESP."""
    id_data, rand_kms = fork_modifier(resp)
    return fork_mpkr(policy.prf_func, mpkr, id_data, rand_kms)


def fork_modifier(msg: Message) -> tuple[bytes, bytes]:
    """(IDRr ID Data, RANDRkms) of a RESOLVE_RESP / TRANSFER_RESP; MikeyError if absent."""
    idr = msg.idr(IdRole.IDRr)
    rand_kms = msg.randr(RandRole.RANDRkms)
    if idr is None or rand_kms is None:
        raise MikeyError("key forking needs IDRr and RANDRkms", -1, ErrNo.UNSPECIFIED)
    return idr.data, rand_kms


def verify_transfer_resp(resp: Message, init: Message, key: bytes) -> None:
    """Verify TRANSFER_RESP's V with MPKi or MPKr' (``key``), over resp || TRANSFER_INIT, after
    checking that it repeats the TRANSFER_INIT's PRF func and CSB ID (RFC 6043 4.2.2.3)."""
    if resp.header.data_type != DataType.TRANSFER_RESP:
        raise MikeyError("not a TRANSFER_RESP", -1, ErrNo.INVALID_DT)
    if resp.header.csb_id != init.header.csb_id:
        raise MikeyError("TRANSFER_RESP CSB ID differs from TRANSFER_INIT", 4, ErrNo.AUTH_FAILURE)
    if resp.header.prf_func != init.header.prf_func:
        raise MikeyError("TRANSFER_RESP PRF func differs from TRANSFER_INIT", 3, ErrNo.INVALID_PRF)
    flags = transfer_ticket(init).policy.flags
    verify_v(resp, key, initial=init, g_flag=bool(flags & TpFlags.G))


def fork_keys(
    policy: TicketPolicy, keys: Sequence[KeyData], id_data: bytes, rand_kms: bytes
) -> tuple[KeyData, ...]:
    """TGK -> TGK' (K7) for every TGK/TGK+SALT; other keys unchanged (each keeps its SPI)."""
    return tuple(
        KeyData(k.key_type, fork_tgk(policy.prf_func, k.key, id_data, rand_kms), k.salt, k.kv)
        if k.key_type in FORKABLE
        else k
        for k in keys
    )


# --- KEMACs of the Ticket Transfer (UE-supplied keys) ----------------------------------------


def open_kemac(
    msg: Message, inkey: bytes, initial: Message | None = None, *, g_flag: bool = False
) -> tuple[KeyData, ...]:
    """Decrypt the KEMAC of a received message with K1/K2 keys from ``inkey`` (a PSK, MPKi or
    MPKr'); the IV takes the message's CSB ID and the T that spec Q4 names (``kemac_iv_t``)."""
    kemac = msg.require(Kemac)
    rand_i, rand_r = message_rands(msg, initial, g_flag=g_flag)
    keys = message_keys(msg.header.prf_func, inkey, msg.header.csb_id,
                        response=msg.header.data_type in _RESPONSES, rand_i=rand_i,
                        rand_r=rand_r, encr_alg=kemac.encr_alg, mac_alg=MacAlg.NULL)  # fmt: skip
    plain = kemac_crypt(kemac.encr_alg, keys, msg.header.csb_id, kemac_iv_t(msg, initial),
                        kemac.encr_data, decrypt=True)  # fmt: skip
    return parse_key_data(plain)


def seal_kemac(
    keys: Sequence[KeyData],
    inkey: bytes,
    *,
    prf: PrfFunc,
    csb_id: int,
    response: bool,
    rand_i: bytes | None,
    rand_r: bytes | None,
    t: Timestamp,
    encr_alg: EncrAlg,
) -> Kemac:
    """KEMAC = E(encr_key, keys) with NULL MAC (the message's V protects it), encr_key and
    salt_key derived (K1 / K2) from ``inkey``; the IV takes ``t``, the T of the message that will
    carry it (spec Q4)."""
    mk = message_keys(prf, inkey, csb_id, response=response, rand_i=rand_i, rand_r=rand_r,
                      encr_alg=encr_alg, mac_alg=MacAlg.NULL)  # fmt: skip
    return encrypt_kemac(keys, mk, csb_id=csb_id, t=t, encr_alg=encr_alg)


def encrypt_kemac(
    keys: Sequence[KeyData], mk: MessageKeys, *, csb_id: int, t: Timestamp, encr_alg: EncrAlg
) -> Kemac:
    """KEMAC = E(mk.encr_key, keys) with the AES-CM IV from ``mk.salt_key``, ``csb_id`` and
    ``t`` (the T of the message carrying it), NULL MAC."""
    plain = serialize_key_data(keys)
    return Kemac(encr_alg, kemac_crypt(encr_alg, mk, csb_id, t.as_64(), plain, decrypt=False))


def supplied_keys(
    init: Message,
    ticket_keys: Sequence[KeyData],
    *,
    resp: Message | None = None,
    mpki: bytes | None = None,
    resp_key: bytes | None = None,
) -> tuple[KeyData, ...]:
    """The keys the crypto sessions use: the TRANSFER_RESP's own KEMAC (M flag, opened with
    ``resp_key`` = MPKi or MPKr'), else the TRANSFER_INIT's own KEMAC (L flag, opened with
    ``mpki``), else ``ticket_keys`` (TGK' already forked where forking applies)."""
    flags = transfer_ticket(init).policy.flags
    keys = tuple(ticket_keys)
    if init.find(Kemac) is not None:
        if not flags & TpFlags.L:
            raise MikeyError("the ticket does not let the Initiator supply keys (L), yet the "
                             "TRANSFER_INIT carries a KEMAC", -1, ErrNo.UNSPECIFIED)  # fmt: skip
        if mpki is None:
            raise MikeyError("the TRANSFER_INIT's own KEMAC needs MPKi to be opened", -1)
        keys = open_kemac(init, mpki)
    if resp is not None and resp.find(Kemac) is not None:
        if not flags & TpFlags.M:
            raise MikeyError("the ticket does not let the Responder supply keys (M), yet the "
                             "TRANSFER_RESP carries a KEMAC", -1, ErrNo.UNSPECIFIED)  # fmt: skip
        if resp_key is None:
            raise MikeyError("the TRANSFER_RESP's own KEMAC needs MPKi or MPKr' to be opened", -1)
        keys = open_kemac(resp, resp_key, init, g_flag=bool(flags & TpFlags.G))
    return keys


# --- crypto sessions and their policies --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CryptoSession:
    """One crypto session both sides use: its CS ID, SPI and the lengths its policy asks for."""

    cs_id: int
    spi: bytes
    tek_len: int | None  # None: the policy does not say (SRTP default)
    salt_len: int | None


def _param(sp: SecurityPolicy, kind: SrtpParam) -> int | None:
    for prm in sp.params:
        if prm.type == kind:
            if not prm.value:
                raise MikeyError(f"SP {sp.policy_no}: empty {kind.name}", -1, ErrNo.INVALID_SPPAR)
            return int.from_bytes(prm.value, "big")
    return None


def policy_lengths(sp: SecurityPolicy | None) -> tuple[int | None, int | None]:
    """(master key length, master salt length) an SRTP security policy asks for (RFC 3830
    6.10.1 types 1 and 4); None where it says nothing (or is not SRTP)."""
    if sp is None or sp.prot_type != ProtType.SRTP:
        return None, None
    key_len = _param(sp, SrtpParam.SESSION_ENCR_KEY_LEN)
    salt_len = _param(sp, SrtpParam.SESSION_SALT_LEN)
    if key_len is not None and key_len not in MASTER_KEY_LENS:
        raise MikeyError(f"SP {sp.policy_no}: session key length {key_len} not supported", -1,
                         ErrNo.INVALID_SPPAR)  # fmt: skip
    if salt_len is not None and salt_len > MAX_SALT_LEN:
        raise MikeyError(f"SP {sp.policy_no}: salt length {salt_len} not supported", -1,
                         ErrNo.INVALID_SPPAR)  # fmt: skip
    return key_len, salt_len


def _policy(number: int, *sources: Message) -> SecurityPolicy:
    for msg in sources:
        for sp in msg.find_all(SecurityPolicy):
            if sp.policy_no == number:
                return sp
    raise MikeyError(f"no SP payload has policy no {number}", -1, ErrNo.INVALID_SP)


def crypto_sessions(init: Message, resp: Message | None = None) -> list[CryptoSession]:
    """The crypto sessions both sides use (RFC 6043 4.2.2.3, 6.1.1), see the module rules."""
    answer = resp if resp is not None else init
    m = answer.header.cs_map
    if isinstance(m, SrtpIdMap):  # RFC 3830 style; MIKEY-TICKET forbids it (rules.py refuses)
        return [
            CryptoSession(n, b"", *policy_lengths(_policy(e.policy_no, answer, init)))
            for n, e in enumerate(m.entries, 1)
        ]
    if not isinstance(m, GenericIdMap):
        return []
    offered = init.header.cs_map
    spis = {e.cs_id: e.spi for e in offered.entries} if isinstance(offered, GenericIdMap) else {}
    out = []
    for e in m.entries:
        sources = (answer, init) if resp is not None else (init,)
        lengths = {policy_lengths(_policy(n, *sources)) for n in e.policy_nos}
        if len(lengths) > 1:
            raise MikeyError(f"CS {e.cs_id}: the offered policies differ in key lengths and no "
                             "TRANSFER_RESP says which was chosen", -1,
                             ErrNo.INVALID_SPPAR)  # fmt: skip
        key_len, salt_len = lengths.pop() if lengths else (None, None)
        out.append(CryptoSession(e.cs_id, e.spi or spis.get(e.cs_id, b""), key_len, salt_len))
    return out


def session_keys(
    init: Message,
    keys: Sequence[KeyData],
    *,
    resp: Message | None = None,
    mpki: bytes | None = None,
    resp_key: bytes | None = None,
) -> list[SessionKey]:
    """TEK, salt and SPI of every crypto session both sides use (K3, HDR PRF), with the key and
    salt lengths their security policies ask for.  ``keys`` are the ticket's session keys as
    this party holds them (TGK' already forked where forking applies); ``mpki`` / ``resp_key``
    (MPKi, MPKi or MPKr') open a KEMAC of the transfer messages (UE-supplied keys)."""
    policy = transfer_ticket(init).policy
    func = init.header.prf_func
    rand_i = init.randr(RandRole.RANDRi) if policy.flags & TpFlags.H else None
    rand_r = None
    if policy.flags & TpFlags.G:
        if resp is None or resp.randr(RandRole.RANDRr) is None:
            raise MikeyError("G flag set: RANDRr from TRANSFER_RESP needed", -1)
        rand_r = resp.randr(RandRole.RANDRr)
    if rand_i is None and rand_r is None:
        raise MikeyError("neither RANDRi nor RANDRr may be used for TEKs", -1, ErrNo.INVALID_TPPAR)
    used = supplied_keys(init, keys, resp=resp, mpki=mpki, resp_key=resp_key)
    sessions = crypto_sessions(init, resp)
    tgk = next((k for k in used if k.key_type in TGK_LIKE), None)
    out = []
    if tgk is not None:
        for cs in sessions:
            n = cs.tek_len or SRTP_MASTER_KEY_LEN
            salt_n = SRTP_MASTER_SALT_LEN if cs.salt_len is None else cs.salt_len
            salt = tgk.salt or tek_salt(func, tgk.key, cs.cs_id, rand_i, rand_r, salt_n)
            key = tek(func, tgk.key, cs.cs_id, rand_i, rand_r, n)
            out.append(SessionKey(cs.cs_id, key, salt, cs.spi))
        return out
    teks = [k for k in used if k.key_type in TEK_TYPES]
    if len(teks) < len(sessions):
        raise MikeyError("fewer TEKs than crypto sessions", -1, ErrNo.UNSPECIFIED)
    for cs, k in zip(sessions, teks, strict=False):
        if cs.tek_len is not None and len(k.key) != cs.tek_len:
            raise MikeyError(f"CS {cs.cs_id}: a {len(k.key)}-byte TEK where the policy asks for "
                             f"{cs.tek_len}", -1, ErrNo.INVALID_SPPAR)  # fmt: skip
        out.append(SessionKey(cs.cs_id, k.key, k.salt, cs.spi))
    return out


def check_vi(init: Message) -> None:
    """With key forking: Initiator Data's Vi must equal TRANSFER_INIT's V (RFC 6043 4.2.3.6)."""
    ticket = transfer_ticket(init)
    vi = next(iter(ticket.initiator_data or ()), None)
    if not isinstance(vi, Verification) or vi != init.payloads[-1]:
        raise MikeyError("Initiator Data Vi does not match TRANSFER_INIT V", -1, ErrNo.AUTH_FAILURE)


__all__ = [
    "CryptoSession",
    "RoleIdentity",
    "SessionKey",
    "check_vi",
    "crypto_sessions",
    "encrypt_kemac",
    "fork_keys",
    "fork_modifier",
    "forked_mpkr_for",
    "message_rands",
    "open_kemac",
    "policy_lengths",
    "seal_kemac",
    "session_keys",
    "supplied_keys",
    "verify_transfer_init",
    "verify_transfer_resp",
    "verify_v",
]
