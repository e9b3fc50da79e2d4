"""Valid MIKEY-TICKET messages from one full exchange (with and without key forking), for tests,
fuzz seeds and tshark; built with the UE roles against the in-test KMS double."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from firmware.mikey.codec import (
    EmptyMap,
    GeneralExtension,
    GenericIdEntry,
    Header,
    KeyData,
    Payload,
    Rand,
    RoleIdentity,
    RoleRand,
    SecurityPolicy,
    TicketPolicy,
    TpFlags,
    Verification,
)
from firmware.mikey.constants import DataType, ErrNo, IdRole, IdType, MacAlg, PrfFunc, RandRole
from firmware.mikey.exchange import Initiator, Responder
from firmware.mikey.kms import build_error
from firmware.mikey.message import Message, decode, encode
from firmware.mikey.transfer import SessionKey

from .kms_double import KmsDouble, ntp_t

ALICE = b"sip:alice@example.com"
BOB = b"sip:bob@example.com"
KMS_ID = b"kms.example.com"
PSK_A = bytes(range(16))
PSK_B = bytes(range(16, 32))
FORKING = TpFlags.D | TpFlags.E | TpFlags.F | TpFlags.H | TpFlags.I | TpFlags.N | TpFlags.O
PLAIN = TpFlags.D | TpFlags.H | TpFlags.N | TpFlags.O
WITH_RANDRR = TpFlags.D | TpFlags.E | TpFlags.F | TpFlags.G | TpFlags.H | TpFlags.N | TpFlags.O


@dataclass
class Run:
    request_init: bytes
    request_resp: bytes
    transfer_init: bytes
    resolve_init: bytes
    resolve_resp: bytes
    transfer_resp: bytes
    initiator_keys: list[SessionKey]
    responder_keys: list[SessionKey]
    kms: KmsDouble
    initiator: Initiator
    responder: Responder

    def all(self) -> list[bytes]:
        return [self.request_init, self.request_resp, self.transfer_init, self.resolve_init,
                self.resolve_resp, self.transfer_resp]  # fmt: skip


def policy(flags: TpFlags, prf: PrfFunc = PrfFunc.MIKEY_1) -> TicketPolicy:
    return TicketPolicy(1, 1, 1, prf, flags, (
        RoleIdentity(IdRole.IDRkms, IdType.URI, KMS_ID),
        RoleIdentity(IdRole.IDRi, IdType.URI, ALICE),
        RoleIdentity(IdRole.IDRr, IdType.URI, BOB),
    ))  # fmt: skip


def run(
    flags: TpFlags = FORKING,
    *,
    sessions: int = 2,
    prf: PrfFunc = PrfFunc.MIKEY_1,
    psk_ids: bool = True,
    key_len: int = 16,
    rand_len: int = 16,
    psks: tuple[bytes, bytes] = (PSK_A, PSK_B),
    policies: Sequence[SecurityPolicy] = (),
    policy_nos: tuple[int, ...] = (),
    entries: Sequence[GenericIdEntry] | None = None,
    init_keys: Sequence[KeyData] = (),
    resp_sessions: Sequence[GenericIdEntry] = (),
    resp_policies: Sequence[SecurityPolicy] = (),
    resp_keys: Sequence[KeyData] = (),
) -> Run:
    """One full exchange.  ``policies`` / ``policy_nos`` are the SP payloads the TRANSFER_INIT
    offers and the policies each crypto session names (``entries`` replaces the offered blocks);
    ``init_keys`` / ``resp_keys`` are keys the UEs supply themselves (L / M flags);
    ``resp_sessions`` / ``resp_policies`` what the Responder adds to its answer."""
    kms = KmsDouble(KMS_ID, {ALICE: psks[0], BOB: psks[1]}, prf=prf, key_len=key_len)
    pol = policy(flags, prf)
    i = Initiator(ALICE, psks[0], KMS_ID, psk_id=b"alice-psk" if psk_ids else None, prf_func=prf)
    r = Responder(BOB, psks[1], KMS_ID, psk_id=b"bob-psk" if psk_ids else None, prf_func=prf)
    req = i.request_init(csb_id=0x01020304, t=ntp_t(0), rand_i=b"\x11" * rand_len, policy=pol)
    rresp = kms.handle_request(req, pol)
    i.process_request_resp(rresp)
    if entries is None:
        entries = [GenericIdEntry.srtp(n + 1, 0x1000 + n, spi=bytes((n,)), policy_nos=policy_nos)
                   for n in range(sessions)]  # fmt: skip
    ti = i.transfer_init(csb_id=0x0A0B0C0D, t=ntp_t(4), rand_i=b"\x22" * rand_len,
                         sessions=entries, responder=BOB, policies=policies,
                         keys=init_keys)  # fmt: skip
    r.receive_transfer_init(ti)
    ri = r.resolve_init(csb_id=0x05060708, t=ntp_t(5), rand_r=b"\x33" * rand_len)
    rr = kms.handle_resolve(ri)
    r.process_resolve_resp(rr)
    tr = r.transfer_resp(t=ntp_t(6), rand_r=b"\x44" * rand_len, sessions=resp_sessions,
                         policies=resp_policies, keys=resp_keys)  # fmt: skip
    ik = i.process_transfer_resp(tr)
    return Run(req, rresp, ti, ri, rr, tr, ik, r.session_keys(), kms, i, r)


def corpus() -> list[bytes]:
    out: list[bytes] = []
    for flags in (FORKING, PLAIN):
        out += run(flags).all()
    out.append(build_error(decode(out[0]).header, [ErrNo.AUTH_FAILURE], t=ntp_t(9)))
    return out


def crafted_request(payloads: int, *, nested: int = 0, pad: int = 0) -> bytes:
    """A well-formed REQUEST_INIT_PSK padded with ``payloads`` empty RAND payloads (2 bytes each,
    the cheapest to send and the dearest to parse per byte), a TP with ``nested`` more IDRr and,
    with ``pad``, a General Extension of that many bytes; its MAC is zeros (what an
    unauthenticated sender can make the KMS parse and MAC)."""
    pol = policy(PLAIN)
    idrs = tuple(RoleIdentity(IdRole.IDRr, IdType.URI, b"") for _ in range(nested))
    tp = TicketPolicy(1, 1, 1, PrfFunc.MIKEY_1, PLAIN, (*(pol.payloads or ()), *idrs))
    body: list[Payload] = [ntp_t(0), RoleRand(RandRole.RANDRi, bytes(16)), tp]
    body += [Rand(b"")] * payloads
    if pad:
        body.append(GeneralExtension(0, bytes(pad)))
    body.append(Verification(MacAlg.HMAC_SHA_1_160, bytes(20)))
    return encode(Message(Header(DataType.REQUEST_INIT_PSK, 1, EmptyMap()), tuple(body)))
