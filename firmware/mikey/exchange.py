"""Sans-I/O UE roles of MIKEY-TICKET (RFC 6043 4.2): ``Initiator`` and ``Responder``.

Used by the node's tests, demo and benchmarks.  Every method takes bytes or values and returns
bytes or values; times (T payloads), RANDs and CSB IDs come in as arguments.

Initiator: request_init -> (KMS) process_request_resp -> transfer_init -> (Responder)
process_transfer_resp.  Responder: receive_transfer_init -> resolve_init -> (KMS)
process_resolve_resp -> transfer_resp.  Both end with ``session_keys`` (TEK and salt per crypto
session).  Key forking (I flag) is handled on both sides: the Initiator adds Initiator Data (Vi,
Vr) and forks MPKr/TGKs with the (IDRr, RANDRkms) it receives in TRANSFER_RESP; the Responder
gets MPKr'/TGK' from the KMS and echoes the modifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from firmware.mikey.codec import (
    EmptyMap,
    GenericIdEntry,
    GenericIdMap,
    Header,
    Kemac,
    KeyData,
    Payload,
    RoleRand,
    SecurityPolicy,
    Ticket,
    TicketPolicy,
    Timestamp,
    TpFlags,
    Verification,
    parse_key_data,
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
from firmware.mikey.crypto import compute_mac, fork_mpkr, kemac_crypt, message_keys, vr_auth_key
from firmware.mikey.errors import MikeyError
from firmware.mikey.kms import idr, sign_message
from firmware.mikey.message import Message, appended_identities, decode, encode, mac_input
from firmware.mikey.transfer import (
    SessionKey,
    check_vi,
    fork_keys,
    fork_modifier,
    message_rands,
    session_keys,
    transfer_ticket,
    verify_transfer_init,
    verify_transfer_resp,
    verify_v,
)
from firmware.mikey.wire import serialize_nested


def open_kemac(msg: Message, inkey: bytes, initial: Message | None = None) -> tuple[KeyData, ...]:
    """Decrypt the KEMAC of a received message with K1/K2 keys from ``inkey`` (IV from the
    message's own T and CSB ID)."""
    kemac = msg.require(Kemac)
    rand_i, rand_r = message_rands(msg, initial)
    keys = message_keys(msg.header.prf_func, inkey, msg.header.csb_id,
                        response=initial is not None, rand_i=rand_i, rand_r=rand_r,
                        encr_alg=kemac.encr_alg, mac_alg=MacAlg.NULL)  # fmt: skip
    plain = kemac_crypt(kemac.encr_alg, keys, msg.header.csb_id, msg.timestamp.as_64(),
                        kemac.encr_data, decrypt=True)  # fmt: skip
    return parse_key_data(plain)


def _split_mpks(kd: tuple[KeyData, ...]) -> tuple[list[bytes], tuple[KeyData, ...]]:
    mpks = [k.key for k in kd if k.key_type is KeyDataType.MPK]
    if not mpks or len(mpks) > 2:
        raise MikeyError("KEMAC must carry one or two MPKs", -1, ErrNo.UNSPECIFIED)
    return mpks, tuple(k for k in kd if k.key_type is not KeyDataType.MPK)


@dataclass
class _Ue:
    """A UE's credentials with the KMS: ``psk`` (named by ``psk_id``) and the identities."""

    identity: bytes
    psk: bytes = field(repr=False)
    kms_identity: bytes
    psk_id: bytes | None = None
    prf_func: PrfFunc = PrfFunc.MIKEY_1
    mac_alg: MacAlg = MacAlg.HMAC_SHA_1_160

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
                           mac_alg=self.mac_alg).auth_key  # fmt: skip
        return sign_message(header, payloads, key, self.mac_alg, self.identity + self.kms_identity)


@dataclass
class Initiator(_Ue):
    """The initiating UE: shares ``psk`` (named by ``psk_id``) with the KMS."""

    _request: Message | None = field(default=None, repr=False)
    ticket: Ticket | None = field(default=None, repr=False)
    mpki: bytes = field(default=b"", repr=False)
    mpkr: bytes | None = field(default=None, repr=False)
    keys: tuple[KeyData, ...] = field(default=(), repr=False)
    _init: Message | None = field(default=None, repr=False)

    def request_init(self, *, csb_id: int, t: Timestamp, rand_i: bytes,
                     policy: TicketPolicy) -> bytes:  # fmt: skip
        """REQUEST_INIT_PSK = HDR, T, RANDRi, IDRi, IDRkms, TP, [IDRpsk], V."""
        data = self._psk_initial(DataType.REQUEST_INIT_PSK, csb_id, t,
                                 RoleRand(RandRole.RANDRi, rand_i), policy)  # fmt: skip
        self._request = decode(data)
        return data

    def process_request_resp(self, data: bytes) -> Ticket:
        """Verify REQUEST_RESP (K2 from the PSK), decrypt MPKi [MPKr] keys; returns the ticket."""
        if self._request is None:
            raise MikeyError("no REQUEST_INIT sent", -1)
        resp = decode(data)
        if resp.header.data_type != DataType.REQUEST_RESP:
            raise MikeyError("not a REQUEST_RESP", 0, ErrNo.INVALID_DT)
        verify_v(resp, self.psk, initial=self._request)
        mpks, self.keys = _split_mpks(open_kemac(resp, self.psk, self._request))
        self.mpki = mpks[0]
        self.mpkr = mpks[1] if len(mpks) > 1 else None
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
    ) -> bytes:
        """TRANSFER_INIT = HDR(GENERIC-ID), T, RANDRi, IDRi, IDRr, {SP}, TICKET, V (K1 from
        MPKi); with the I flag the TICKET gets Initiator Data (Vi, Vr)."""
        if self.ticket is None:
            raise MikeyError("no ticket", -1)
        pol = self.ticket.policy
        forking = bool(pol.flags & TpFlags.I)
        n = self.mac_alg.mac_len
        zero = Verification(self.mac_alg, bytes(n))
        ticket = Ticket(pol, self.ticket.ticket_data, (zero, zero) if forking else None)
        header = Header(DataType.TRANSFER_INIT, csb_id, GenericIdMap(tuple(sessions)),
                        self.prf_func, bool(pol.flags & TpFlags.F))  # fmt: skip
        payloads: list[Payload] = [
            t,
            RoleRand(RandRole.RANDRi, rand_i),
            idr(IdRole.IDRi, self.identity),
            idr(IdRole.IDRr, responder),
            *policies,
            ticket,
        ]
        draft = decode(encode(Message(header, (*payloads, zero))))
        key = message_keys(self.prf_func, self.mpki, csb_id, response=False, rand_i=rand_i,
                           rand_r=None, mac_alg=self.mac_alg).auth_key  # fmt: skip
        mac = compute_mac(self.mac_alg, key, mac_input(draft, appended_identities(draft)))
        v = Verification(self.mac_alg, mac)
        if forking:
            if self.mpkr is None:
                raise MikeyError("key forking needs MPKr from the KMS", -1)
            vr_key = vr_auth_key(pol.prf_func, self.mpkr, self.mac_alg)
            out = bytearray()
            serialize_nested(out, (v, zero), "Initiator Data")
            field_bytes = bytes(out[2 : len(out) - n])
            vr = Verification(self.mac_alg, compute_mac(self.mac_alg, vr_key, field_bytes))
            payloads[-1] = Ticket(pol, self.ticket.ticket_data, (v, vr))
        data = encode(Message(header, (*payloads, v)))
        self._init = decode(data)
        return data

    def process_transfer_resp(self, data: bytes) -> list[SessionKey]:
        """Verify TRANSFER_RESP (MPKi, or MPKr' forked with its IDRr/RANDRkms) and return the
        TEK and salt of every crypto session."""
        if self._init is None:
            raise MikeyError("no TRANSFER_INIT sent", -1)
        resp = decode(data)
        pol = transfer_ticket(self._init).policy
        keys = self.keys
        key = self.mpki
        if pol.flags & TpFlags.I:
            if self.mpkr is None:
                raise MikeyError("key forking needs MPKr", -1)
            id_data, rand_kms = fork_modifier(resp)
            key = fork_mpkr(pol.prf_func, self.mpkr, id_data, rand_kms)
            keys = fork_keys(pol, keys, id_data, rand_kms)
        verify_transfer_resp(resp, self._init, key)
        return session_keys(self._init, keys, resp=resp)


@dataclass
class Responder(_Ue):
    """The responding UE: shares ``psk`` with the KMS, resolves tickets it receives."""

    init: Message | None = field(default=None, repr=False)
    _resolve: Message | None = field(default=None, repr=False)
    mpki: bytes = field(default=b"", repr=False)
    mpkr_forked: bytes | None = field(default=None, repr=False)
    keys: tuple[KeyData, ...] = field(default=(), repr=False)
    modifier: tuple[bytes, bytes] | None = None
    _resp: Message | None = field(default=None, repr=False)

    def receive_transfer_init(self, data: bytes) -> Message:
        """Parse a TRANSFER_INIT (it cannot be verified before the ticket is resolved)."""
        msg = decode(data)
        if msg.header.data_type != DataType.TRANSFER_INIT:
            raise MikeyError("not a TRANSFER_INIT", 0, ErrNo.INVALID_DT)
        transfer_ticket(msg)
        self.init = msg
        return msg

    def resolve_init(self, *, csb_id: int, t: Timestamp, rand_r: bytes) -> bytes:
        """RESOLVE_INIT_PSK = HDR, T, RANDRr, IDRr, IDRkms, TICKET, [IDRpsk], V."""
        if self.init is None:
            raise MikeyError("no TRANSFER_INIT received", -1)
        data = self._psk_initial(DataType.RESOLVE_INIT_PSK, csb_id, t,
                                 RoleRand(RandRole.RANDRr, rand_r),
                                 transfer_ticket(self.init))  # fmt: skip
        self._resolve = decode(data)
        return data

    def process_resolve_resp(self, data: bytes) -> None:
        """Verify RESOLVE_RESP, take MPKi [MPKr'] keys, then verify the TRANSFER_INIT with MPKi
        (and Vi against its V when forking)."""
        if self._resolve is None or self.init is None:
            raise MikeyError("no RESOLVE_INIT sent", -1)
        resp = decode(data)
        if resp.header.data_type != DataType.RESOLVE_RESP:
            raise MikeyError("not a RESOLVE_RESP", 0, ErrNo.INVALID_DT)
        verify_v(resp, self.psk, initial=self._resolve)
        mpks, self.keys = _split_mpks(open_kemac(resp, self.psk, self._resolve))
        self.mpki = mpks[0]
        pol = transfer_ticket(self.init).policy
        if pol.flags & TpFlags.I:
            if len(mpks) != 2:
                raise MikeyError("key forking: RESOLVE_RESP lacks MPKr'", -1, ErrNo.UNSPECIFIED)
            self.mpkr_forked = mpks[1]
            self.modifier = fork_modifier(resp)
        verify_transfer_init(self.init, self.mpki)
        if pol.flags & TpFlags.I:
            check_vi(self.init)

    def transfer_resp(self, *, t: Timestamp, rand_r: bytes | None = None) -> bytes:
        """TRANSFER_RESP = HDR, T, [RANDRr], IDRr, [RANDRkms], V (K2 from MPKi or MPKr'); IDRr is
        the forking modifier's, else our own identity."""
        if self.init is None or not self.mpki:
            raise MikeyError("ticket not resolved", -1)
        h = self.init.header
        pol = transfer_ticket(self.init).policy
        cs_map = h.cs_map
        if isinstance(cs_map, GenericIdMap):
            cs_map = GenericIdMap(tuple(
                GenericIdEntry(e.cs_id, e.prot_type, e.s_flag, e.policy_nos[:1], e.session_data,
                               e.spi) for e in cs_map.entries))  # fmt: skip
        header = Header(DataType.TRANSFER_RESP, h.csb_id, cs_map, h.prf_func, False)
        payloads: list[Payload] = [t]
        g = bool(pol.flags & TpFlags.G)
        if g:
            if rand_r is None:
                raise MikeyError("G flag: RANDRr required", -1)
            payloads.append(RoleRand(RandRole.RANDRr, rand_r))
        key_in = self.mpki
        if self.modifier is not None and self.mpkr_forked is not None:
            payloads += [idr(IdRole.IDRr, self.modifier[0]),
                         RoleRand(RandRole.RANDRkms, self.modifier[1])]  # fmt: skip
            key_in = self.mpkr_forked
        else:
            # Without forking nothing else says who answered (the MAC is keyed from MPKi, which
            # every resolver holds): name ourselves, so a key-release check can hold us to it.
            payloads.append(idr(IdRole.IDRr, self.identity))
        rand_i = self.init.randr(RandRole.RANDRi)
        key = message_keys(h.prf_func, key_in, h.csb_id, response=True, rand_i=rand_i,
                           rand_r=rand_r if g else None, mac_alg=self.mac_alg).auth_key  # fmt: skip
        data = sign_message(header, payloads, key, self.mac_alg, self.init.raw)
        self._resp = decode(data)
        return data

    def session_keys(self) -> list[SessionKey]:
        if self.init is None:
            raise MikeyError("no TRANSFER_INIT", -1)
        return session_keys(self.init, self.keys, resp=self._resp)
