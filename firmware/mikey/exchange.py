"""Sans-I/O UE roles of MIKEY-TICKET (RFC 6043 4.2): ``Initiator`` and ``Responder``.

Used by the node's tests, demo and benchmarks.  Every method takes bytes or values and returns
bytes or values; times (T payloads), RANDs and CSB IDs come in as arguments.

Initiator: request_init -> (KMS) process_request_resp -> transfer_init -> (Responder)
process_transfer_resp.  Responder: receive_transfer_init -> resolve_init -> (KMS)
process_resolve_resp -> transfer_resp.  Both end with ``session_keys`` (TEK, salt and SPI per
crypto session).  Key forking (I flag) is handled on both sides: the Initiator adds Initiator
Data (Vi, Vr) and forks MPKr/TGKs with the (IDRr, RANDRkms) it receives in TRANSFER_RESP; the
Responder gets MPKr'/TGK' from the KMS and echoes the modifier.

Rules and invariants:
- Every received message passes rules.check_message (header rules, required payloads with the
  ticket's flags, algorithm strength) before any key is derived from it; a TRANSFER_INIT using
  the SRTP-ID map is refused by the Responder itself (RFC 6043 6.1).
- The RANDs we send are at least 16 bytes (RFC 3830 6.11); the V MAC defaults to the strength of
  the PRF func and never mixes with it (RFC 6043 12.1).
- The keys the KMS names (KV type SPI, 6.2.1) are kept (``mpki_spi``, ``keys``); a crypto
  session offered without an SPI is named by the SPI of the ticket's TGK when the KMS gave one.
- The Responder's TRANSFER_RESP answers every crypto session with exactly one policy, Session
  Data and an SPI (6.1.1, 4.2.2.3): the first policy offered, else its own first SP, else an SP
  payload of SRTP defaults it adds; the SPI offered, else the TGK's, else the CS ID as a one-byte
  MKI (unique in the CSB).  It may add crypto sessions and, with the M flag, supply keys; the
  Initiator may supply keys with the L flag (KEMAC protected with MPKi, 4.2.2.1).
- Without key forking the TRANSFER_RESP names its responder (IDRr): the identity the KMS's
  RESOLVE_RESP named ("the same identity MUST be sent", 4.2.2.3), else our own, so a key-release
  check can hold the answer to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from firmware.mikey.codec import (
    EmptyMap,
    GenericIdEntry,
    GenericIdMap,
    Header,
    KeyData,
    Payload,
    RoleRand,
    SecurityPolicy,
    Ticket,
    TicketPolicy,
    Timestamp,
    TpFlags,
    Verification,
)
from firmware.mikey.constants import (
    DataType,
    ErrNo,
    IdRole,
    IdType,
    KeyDataType,
    MacAlg,
    PrfFunc,
    RandRole,
)
from firmware.mikey.crypto import (
    check_strength,
    compute_mac,
    encr_for,
    fork_mpkr,
    mac_for,
    message_keys,
    vr_auth_key,
)
from firmware.mikey.errors import MikeyError
from firmware.mikey.kms import MIN_RAND_LEN, idr, sign_message
from firmware.mikey.message import Message, appended_identities, decode, encode, mac_input
from firmware.mikey.rules import check_message
from firmware.mikey.transfer import (
    TGK_LIKE,
    SessionKey,
    check_vi,
    fork_keys,
    fork_modifier,
    open_kemac,
    seal_kemac,
    session_keys,
    transfer_ticket,
    verify_transfer_init,
    verify_transfer_resp,
    verify_v,
)
from firmware.mikey.wire import serialize_nested

__all__ = ["Initiator", "Responder", "open_kemac"]


def _split_mpks(kd: tuple[KeyData, ...]) -> tuple[list[KeyData], tuple[KeyData, ...]]:
    mpks = [k for k in kd if k.key_type is KeyDataType.MPK]
    if not mpks or len(mpks) > 2:
        raise MikeyError("KEMAC must carry one or two MPKs", -1, ErrNo.UNSPECIFIED)
    return mpks, tuple(k for k in kd if k.key_type is not KeyDataType.MPK)


def _received(data: bytes, data_type: DataType, flags: TpFlags | None = None) -> Message:
    msg = decode(data)
    if msg.header.data_type != data_type:
        raise MikeyError(f"not a {data_type.name}", 1, ErrNo.INVALID_DT)
    check_message(msg, flags=flags)
    return msg


def _strong_rand(rand: bytes, what: str) -> RoleRand:
    if len(rand) < MIN_RAND_LEN:
        raise MikeyError(f"{what} shorter than {MIN_RAND_LEN} bytes", -1, ErrNo.UNSPECIFIED)
    return RoleRand(RandRole.RANDRi if what == "RANDRi" else RandRole.RANDRr, rand)


def _tgk_spi(keys: Sequence[KeyData]) -> bytes | None:
    return next((k.spi for k in keys if k.key_type in TGK_LIKE and k.spi), None)


@dataclass
class _Ue:
    """A UE's credentials with the KMS: ``psk`` (named by ``psk_id``) and the identities; the V
    MAC follows the PRF func's strength unless given."""

    identity: bytes
    psk: bytes = field(repr=False)
    kms_identity: bytes
    psk_id: bytes | None = None
    prf_func: PrfFunc = PrfFunc.MIKEY_1
    mac_alg: MacAlg | None = None

    def __post_init__(self) -> None:
        if self.mac_alg is None:
            self.mac_alg = mac_for(self.prf_func)
        check_strength(self.prf_func, mac_alg=self.mac_alg)

    @property
    def mac(self) -> MacAlg:
        assert self.mac_alg is not None  # set in __post_init__
        return self.mac_alg

    def _psk_initial(
        self, data_type: DataType, csb_id: int, t: Timestamp, rand: RoleRand, last: Payload
    ) -> bytes:
        """HDR, T, RANDRx, IDRx, IDRkms, `last`, [IDRpsk], V keyed K1 from the PSK (RFC 6043
        4.2.1.1 / 4.2.3.1); the MAC covers the message || own identity || KMS identity."""
        own = IdRole.IDRi if rand.role == RandRole.RANDRi else IdRole.IDRr
        header = Header(data_type, csb_id, EmptyMap(), self.prf_func, True)
        payloads: list[Payload] = [
            t,
            rand,
            idr(own, self.identity),
            idr(IdRole.IDRkms, self.kms_identity),
            last,
        ]
        if self.psk_id is not None:
            payloads.append(idr(IdRole.IDRpsk, self.psk_id, IdType.BYTE_STRING))
        initiator = rand.role == RandRole.RANDRi
        key = message_keys(self.prf_func, self.psk, csb_id, response=False,
                           rand_i=rand.value if initiator else None,
                           rand_r=None if initiator else rand.value,
                           mac_alg=self.mac).auth_key  # fmt: skip
        return sign_message(header, payloads, key, self.mac, self.identity + self.kms_identity)


@dataclass
class Initiator(_Ue):
    """The initiating UE: shares ``psk`` (named by ``psk_id``) with the KMS."""

    _request: Message | None = field(default=None, repr=False)
    ticket: Ticket | None = field(default=None, repr=False)
    mpki: bytes = field(default=b"", repr=False)
    mpkr: bytes | None = field(default=None, repr=False)
    mpki_spi: bytes | None = None
    mpkr_spi: bytes | None = None
    keys: tuple[KeyData, ...] = field(default=(), repr=False)
    _init: Message | None = field(default=None, repr=False)

    def request_init(self, *, csb_id: int, t: Timestamp, rand_i: bytes,
                     policy: TicketPolicy) -> bytes:  # fmt: skip
        """REQUEST_INIT_PSK = HDR, T, RANDRi, IDRi, IDRkms, TP, [IDRpsk], V."""
        data = self._psk_initial(DataType.REQUEST_INIT_PSK, csb_id, t,
                                 _strong_rand(rand_i, "RANDRi"), policy)  # fmt: skip
        self._request = decode(data)
        return data

    def process_request_resp(self, data: bytes) -> Ticket:
        """Verify REQUEST_RESP (K2 from the PSK), decrypt MPKi [MPKr] keys; returns the ticket."""
        if self._request is None:
            raise MikeyError("no REQUEST_INIT sent", -1)
        resp = _received(data, DataType.REQUEST_RESP)
        verify_v(resp, self.psk, initial=self._request)
        mpks, self.keys = _split_mpks(open_kemac(resp, self.psk, self._request))
        self.mpki, self.mpki_spi = mpks[0].key, mpks[0].spi
        self.mpkr = mpks[1].key if len(mpks) > 1 else None
        self.mpkr_spi = mpks[1].spi if len(mpks) > 1 else None
        self.ticket = resp.require(Ticket)
        return self.ticket

    def transfer_init(
        self,
        *,
        csb_id: int,
        t: Timestamp,
        rand_i: bytes,
        sessions: Sequence[GenericIdEntry],
        responder: bytes,
        policies: Sequence[SecurityPolicy] = (),
        keys: Sequence[KeyData] = (),
    ) -> bytes:
        """TRANSFER_INIT = HDR(GENERIC-ID), T, RANDRi, IDRi, IDRr, {SP}, TICKET, [KEMAC], V (K1
        from MPKi); with the I flag the TICKET gets Initiator Data (Vi, Vr).  ``keys`` are our
        own session keys (only with the L flag), sent in a KEMAC encrypted with MPKi's keys."""
        if self.ticket is None:
            raise MikeyError("no ticket", -1)
        pol = self.ticket.policy
        forking = bool(pol.flags & TpFlags.I)
        n = self.mac.mac_len
        zero = Verification(self.mac, bytes(n))
        ticket = Ticket(pol, self.ticket.ticket_data, (zero, zero) if forking else None)
        spi = _tgk_spi(self.keys) or b""
        entries = tuple(e if e.spi else GenericIdEntry(e.cs_id, e.prot_type, e.s_flag,
                                                       e.policy_nos, e.session_data, spi)
                        for e in sessions)  # fmt: skip
        header = Header(DataType.TRANSFER_INIT, csb_id, GenericIdMap(entries), self.prf_func,
                        bool(pol.flags & TpFlags.F))  # fmt: skip
        payloads: list[Payload] = [
            t,
            _strong_rand(rand_i, "RANDRi"),
            idr(IdRole.IDRi, self.identity),
            idr(IdRole.IDRr, responder),
            *policies,
            ticket,
        ]
        ticket_at = len(payloads) - 1
        if keys:
            if not pol.flags & TpFlags.L:
                raise MikeyError("the ticket does not let the Initiator supply keys (L)", -1)
            payloads.append(seal_kemac(keys, self.mpki, prf=self.prf_func, csb_id=csb_id,
                                       response=False, rand_i=rand_i, rand_r=None, t=t,
                                       encr_alg=encr_for(self.prf_func)))  # fmt: skip
        draft = decode(encode(Message(header, (*payloads, zero))))
        key = message_keys(self.prf_func, self.mpki, csb_id, response=False, rand_i=rand_i,
                           rand_r=None, mac_alg=self.mac).auth_key  # fmt: skip
        mac = compute_mac(self.mac, key, mac_input(draft, appended_identities(draft)))
        v = Verification(self.mac, mac)
        if forking:
            if self.mpkr is None:
                raise MikeyError("key forking needs MPKr from the KMS", -1)
            vr_key = vr_auth_key(pol.prf_func, self.mpkr, self.mac)
            out = bytearray()
            serialize_nested(out, (v, zero), "Initiator Data")
            field_bytes = bytes(out[2 : len(out) - n])
            vr = Verification(self.mac, compute_mac(self.mac, vr_key, field_bytes))
            payloads[ticket_at] = Ticket(pol, self.ticket.ticket_data, (v, vr))
        data = encode(Message(header, (*payloads, v)))
        self._init = decode(data)
        return data

    def process_transfer_resp(self, data: bytes) -> list[SessionKey]:
        """Verify TRANSFER_RESP (MPKi, or MPKr' forked with its IDRr/RANDRkms) and return the
        TEK, salt and SPI of every crypto session its CS map answers."""
        if self._init is None:
            raise MikeyError("no TRANSFER_INIT sent", -1)
        pol = transfer_ticket(self._init).policy
        resp = _received(data, DataType.TRANSFER_RESP, pol.flags)
        keys = self.keys
        key = self.mpki
        if pol.flags & TpFlags.I:
            if self.mpkr is None:
                raise MikeyError("key forking needs MPKr", -1)
            id_data, rand_kms = fork_modifier(resp)
            key = fork_mpkr(pol.prf_func, self.mpkr, id_data, rand_kms)
            keys = fork_keys(pol, keys, id_data, rand_kms)
        verify_transfer_resp(resp, self._init, key)
        return session_keys(self._init, keys, resp=resp, mpki=self.mpki, resp_key=key)


def _free_policy_no(*messages: Message | Sequence[SecurityPolicy]) -> int:
    used: set[int] = set()
    for m in messages:
        sps = m.find_all(SecurityPolicy) if isinstance(m, Message) else m
        used.update(sp.policy_no for sp in sps)
    return min(set(range(256)) - used)


@dataclass
class Responder(_Ue):
    """The responding UE: shares ``psk`` with the KMS, resolves tickets it receives."""

    init: Message | None = field(default=None, repr=False)
    _resolve: Message | None = field(default=None, repr=False)
    mpki: bytes = field(default=b"", repr=False)
    mpkr_forked: bytes | None = field(default=None, repr=False)
    mpki_spi: bytes | None = None
    mpkr_spi: bytes | None = None
    keys: tuple[KeyData, ...] = field(default=(), repr=False)
    modifier: tuple[bytes, bytes] | None = None
    named: bytes | None = None  # the IDRr the KMS's RESOLVE_RESP named (without forking)
    _resp: Message | None = field(default=None, repr=False)
    _resp_key: bytes = field(default=b"", repr=False)

    def receive_transfer_init(self, data: bytes) -> Message:
        """Parse a TRANSFER_INIT and check what can be checked before the ticket is resolved
        (RFC 6043 4.2.2.2: header rules - no SRTP-ID map - and required payloads)."""
        msg = _received(data, DataType.TRANSFER_INIT)
        self.init = msg
        return msg

    def resolve_init(self, *, csb_id: int, t: Timestamp, rand_r: bytes) -> bytes:
        """RESOLVE_INIT_PSK = HDR, T, RANDRr, IDRr, IDRkms, TICKET, [IDRpsk], V."""
        if self.init is None:
            raise MikeyError("no TRANSFER_INIT received", -1)
        data = self._psk_initial(DataType.RESOLVE_INIT_PSK, csb_id, t,
                                 _strong_rand(rand_r, "RANDRr"),
                                 transfer_ticket(self.init))  # fmt: skip
        self._resolve = decode(data)
        return data

    def process_resolve_resp(self, data: bytes) -> None:
        """Verify RESOLVE_RESP, take MPKi [MPKr'] keys, then verify the TRANSFER_INIT with MPKi
        (and Vi against its V when forking)."""
        if self._resolve is None or self.init is None:
            raise MikeyError("no RESOLVE_INIT sent", -1)
        pol = transfer_ticket(self.init).policy
        resp = _received(data, DataType.RESOLVE_RESP, pol.flags)
        verify_v(resp, self.psk, initial=self._resolve)
        mpks, self.keys = _split_mpks(open_kemac(resp, self.psk, self._resolve))
        self.mpki, self.mpki_spi = mpks[0].key, mpks[0].spi
        if pol.flags & TpFlags.I:
            if len(mpks) != 2:
                raise MikeyError("key forking: RESOLVE_RESP lacks MPKr'", -1, ErrNo.UNSPECIFIED)
            self.mpkr_forked, self.mpkr_spi = mpks[1].key, mpks[1].spi
            self.modifier = fork_modifier(resp)
        named = resp.idr(IdRole.IDRr)
        self.named = named.data if named is not None else None
        verify_transfer_init(self.init, self.mpki)
        if pol.flags & TpFlags.I:
            check_vi(self.init)

    def _answer_map(
        self,
        sessions: Sequence[GenericIdEntry],
        policies: Sequence[SecurityPolicy],
    ) -> tuple[EmptyMap | GenericIdMap, list[SecurityPolicy]]:
        """The CS ID map of the answer and the SP payloads it adds (module rules)."""
        assert self.init is not None
        offered = self.init.header.cs_map
        blocks = {e.cs_id: e for e in offered.entries} if isinstance(offered, GenericIdMap) else {}
        for e in sessions:  # the Responder updates offered blocks and adds its own
            blocks[e.cs_id] = e
        if not blocks:
            return (offered if isinstance(offered, EmptyMap) else EmptyMap()), list(policies)
        own = list(policies)
        spi = _tgk_spi(self.keys)
        out = []
        for cs_id, e in blocks.items():
            if e.policy_nos:
                policy_no = e.policy_nos[0]  # "one of the suggested policies SHOULD be chosen"
            else:  # "if #P = 0 in an initial message, a security profile MUST be provided"
                sp = next((p for p in own if p.prot_type == e.prot_type), None)
                if sp is None:
                    sp = SecurityPolicy(_free_policy_no(self.init, own), e.prot_type)
                    own.append(sp)  # no parameters: SRTP's own defaults (RFC 3830 6.10.1)
                policy_no = sp.policy_no
            if not e.session_data:
                raise MikeyError(f"CS {cs_id}: Session Data needed in the answer (6.1.1)", -1)
            out.append(GenericIdEntry(cs_id, e.prot_type, e.s_flag, (policy_no,), e.session_data,
                                      e.spi or spi or bytes((cs_id,))))  # fmt: skip
        return GenericIdMap(tuple(out)), own

    def transfer_resp(
        self,
        *,
        t: Timestamp,
        rand_r: bytes | None = None,
        sessions: Sequence[GenericIdEntry] = (),
        policies: Sequence[SecurityPolicy] = (),
        keys: Sequence[KeyData] = (),
    ) -> bytes:
        """TRANSFER_RESP = HDR, T, [RANDRr], IDRr, [RANDRkms], {SP}, [KEMAC], V (K2 from MPKi or
        MPKr').  The CS map answers each offered crypto session (and those ``sessions`` add or
        update) with one policy, Session Data and an SPI; ``policies`` are our own SPs; ``keys``
        our own session keys (only with the M flag)."""
        if self.init is None or not self.mpki:
            raise MikeyError("ticket not resolved", -1)
        h = self.init.header
        pol = transfer_ticket(self.init).policy
        cs_map, own = self._answer_map(sessions, policies)
        header = Header(DataType.TRANSFER_RESP, h.csb_id, cs_map, h.prf_func, False)
        payloads: list[Payload] = [t]
        g = bool(pol.flags & TpFlags.G)
        if g:
            if rand_r is None:
                raise MikeyError("G flag: RANDRr required", -1)
            payloads.append(_strong_rand(rand_r, "RANDRr"))
        key_in = self.mpki
        if self.modifier is not None and self.mpkr_forked is not None:
            payloads += [idr(IdRole.IDRr, self.modifier[0]),
                         RoleRand(RandRole.RANDRkms, self.modifier[1])]  # fmt: skip
            key_in = self.mpkr_forked
        else:
            # Without forking nothing else says who answered (the MAC is keyed from MPKi, which
            # every resolver holds): name the KMS's choice, else ourselves, so a key-release
            # check can hold us to it.
            payloads.append(idr(IdRole.IDRr, self.named or self.identity))
        payloads += own
        rand_i = self.init.randr(RandRole.RANDRi)
        if keys:
            if not pol.flags & TpFlags.M:
                raise MikeyError("the ticket does not let the Responder supply keys (M)", -1)
            payloads.append(seal_kemac(keys, key_in, prf=h.prf_func, csb_id=h.csb_id,
                                       response=True, rand_i=rand_i,
                                       rand_r=rand_r if g else None, t=t,
                                       encr_alg=encr_for(h.prf_func)))  # fmt: skip
        key = message_keys(h.prf_func, key_in, h.csb_id, response=True, rand_i=rand_i,
                           rand_r=rand_r if g else None, mac_alg=self.mac).auth_key  # fmt: skip
        data = sign_message(header, payloads, key, self.mac, self.init.raw)
        self._resp = decode(data)
        self._resp_key = key_in
        return data

    def session_keys(self) -> list[SessionKey]:
        if self.init is None:
            raise MikeyError("no TRANSFER_INIT", -1)
        return session_keys(self.init, self.keys, resp=self._resp, mpki=self.mpki or None,
                            resp_key=self._resp_key or None)  # fmt: skip
