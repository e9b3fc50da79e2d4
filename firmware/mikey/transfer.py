"""Ticket Transfer protection and session keys (RFC 6043 4.2.2, 5.1, 5.5), shared by the UE roles
and the node's Xk key release.

Rules and invariants:
- Which RANDs key which message (RFC 6043 5.1.2): REQUEST_* (RANDRi, -), RESOLVE_* (-, RANDRr),
  TRANSFER_INIT (RANDRi, -), TRANSFER_RESP (RANDRi, RANDRr if the ticket's G flag).
- TRANSFER_INIT's V is keyed with MPKi (K1) over the received bytes minus the TICKET's Initiator
  Data, followed by Identity_i || Identity_r (see message.appended_identities for the Q6 choice).
- TRANSFER_RESP's V is keyed with MPKi, or MPKr' when the I flag (key forking) is set (K2), over
  the received TRANSFER_RESP followed by the complete received TRANSFER_INIT.
- Session keys (K3, HDR PRF): one TEK per CS ID of the TRANSFER_INIT's HDR map, from the first
  TGK/GTGK (TGK' when forked); RANDRi is used if H, RANDRr if G; the salt is the key data's salt
  when present, else derived (0x39A2C14B).  A ticket carrying TEKs only gives TEK i to CS i.
- Forking (K7, TP PRF) changes MPKr and TGKs only; TEKs and GTGKs are never forked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from firmware.mikey.codec import KeyData, RoleIdentity, Ticket, TicketPolicy, TpFlags, Verification
from firmware.mikey.constants import DataType, ErrNo, IdRole, KeyDataType, RandRole
from firmware.mikey.crypto import KeySource, auth_key, check_mac, fork_tgk, tek, tek_salt
from firmware.mikey.errors import MikeyError
from firmware.mikey.message import Message, coverage

TGK_LIKE = (KeyDataType.TGK, KeyDataType.TGK_SALT, KeyDataType.GTGK, KeyDataType.GTGK_SALT)
FORKABLE = (KeyDataType.TGK, KeyDataType.TGK_SALT)
_KEYED_BY_RANDRI = frozenset(
    {DataType.REQUEST_INIT_PSK, DataType.REQUEST_INIT_PK, DataType.TRANSFER_INIT}
)
_KEYED_BY_RANDRR = frozenset({DataType.RESOLVE_INIT_PSK, DataType.RESOLVE_INIT_PK})
_RESPONSES = frozenset({DataType.REQUEST_RESP, DataType.RESOLVE_RESP, DataType.TRANSFER_RESP})


@dataclass(frozen=True, slots=True)
class SessionKey:
    """TEK and salt of one crypto session (what Xk returns: CS ID, session key, salt)."""

    cs_id: int
    tek: bytes = field(repr=False)
    salt: bytes = field(repr=False)


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
    auth_key (the Error message to answer with uses it).  Raises MikeyError(AUTH_FAILURE)."""
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
    data = coverage(msg, initial=initial, initiator=initiator, responder=responder, kms=kms)
    check_mac(v.mac_alg, key, data, v.mac)
    return key


def transfer_ticket(init: Message) -> Ticket:
    t = init.find(Ticket)
    if t is None:
        raise MikeyError("TRANSFER_INIT without TICKET", -1, ErrNo.INVALID_TICKET)
    return t


def verify_transfer_init(
    init: Message, mpki: bytes, *, initiator: bytes | None = None, responder: bytes | None = None
) -> None:
    """Verify TRANSFER_INIT's V with MPKi (Initiator Data excluded, identities appended)."""
    if init.header.data_type != DataType.TRANSFER_INIT:
        raise MikeyError("not a TRANSFER_INIT", -1, ErrNo.INVALID_DT)
    verify_v(init, mpki, initiator=initiator, responder=responder)


def forked_mpkr_for(resp: Message, policy: TicketPolicy, mpkr: bytes) -> bytes:
    """MPKr' from the (IDRr, RANDRkms) modifier carried in a TRANSFER_RESP / RESOLVE_RESP."""
    from firmware.mikey.crypto import fork_mpkr

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
    """Verify TRANSFER_RESP's V with MPKi or MPKr' (``key``), over resp || TRANSFER_INIT."""
    if resp.header.data_type != DataType.TRANSFER_RESP:
        raise MikeyError("not a TRANSFER_RESP", -1, ErrNo.INVALID_DT)
    if resp.header.csb_id != init.header.csb_id:
        raise MikeyError("TRANSFER_RESP CSB ID differs from TRANSFER_INIT", -1, ErrNo.AUTH_FAILURE)
    flags = transfer_ticket(init).policy.flags
    verify_v(resp, key, initial=init, g_flag=bool(flags & TpFlags.G))


def fork_keys(
    policy: TicketPolicy, keys: Sequence[KeyData], id_data: bytes, rand_kms: bytes
) -> tuple[KeyData, ...]:
    """TGK -> TGK' (K7) for every TGK/TGK+SALT; other keys unchanged."""
    return tuple(
        KeyData(k.key_type, fork_tgk(policy.prf_func, k.key, id_data, rand_kms), k.salt, k.kv)
        if k.key_type in FORKABLE
        else k
        for k in keys
    )


def session_keys(
    init: Message,
    keys: Sequence[KeyData],
    *,
    resp: Message | None = None,
    tek_len: int = 16,
    salt_len: int = 14,
) -> list[SessionKey]:
    """TEK and salt for every crypto session of the TRANSFER_INIT (K3, HDR PRF).  ``keys`` are
    the session keys as this party holds them (TGK' already forked where forking applies)."""
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
    cs_ids = init.header.cs_ids
    tgk = next((k for k in keys if k.key_type in TGK_LIKE), None)
    out = []
    if tgk is not None:
        for cs in cs_ids:
            salt = tgk.salt or tek_salt(func, tgk.key, cs, rand_i, rand_r, salt_len)
            out.append(SessionKey(cs, tek(func, tgk.key, cs, rand_i, rand_r, tek_len), salt))
        return out
    teks = [k for k in keys if k.key_type in (KeyDataType.TEK, KeyDataType.TEK_SALT)]
    if len(teks) < len(cs_ids):
        raise MikeyError("fewer TEKs than crypto sessions", -1, ErrNo.UNSPECIFIED)
    return [SessionKey(cs, k.key, k.salt) for cs, k in zip(cs_ids, teks, strict=False)]


def check_vi(init: Message) -> None:
    """With key forking: Initiator Data's Vi must equal TRANSFER_INIT's V (RFC 6043 4.2.3.6)."""
    ticket = transfer_ticket(init)
    vi = next(iter(ticket.initiator_data or ()), None)
    if not isinstance(vi, Verification) or vi != init.payloads[-1]:
        raise MikeyError("Initiator Data Vi does not match TRANSFER_INIT V", -1, ErrNo.AUTH_FAILURE)


__all__ = [
    "RoleIdentity",
    "SessionKey",
    "check_vi",
    "fork_keys",
    "fork_modifier",
    "forked_mpkr_for",
    "message_rands",
    "session_keys",
    "verify_transfer_init",
    "verify_transfer_resp",
    "verify_v",
]
