"""Valid MIKEY-TICKET messages from one full exchange (with and without key forking), for tests,
fuzz seeds and tshark; built with the UE roles against the in-test KMS double."""

from __future__ import annotations

from dataclasses import dataclass

from firmware.mikey.codec import GenericIdEntry, RoleIdentity, TicketPolicy, TpFlags
from firmware.mikey.constants import ErrNo, IdRole, IdType, PrfFunc
from firmware.mikey.exchange import Initiator, Responder
from firmware.mikey.kms import build_error
from firmware.mikey.message import decode
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
) -> Run:
    kms = KmsDouble(KMS_ID, {ALICE: PSK_A, BOB: PSK_B})
    pol = policy(flags, prf)
    i = Initiator(ALICE, PSK_A, KMS_ID, psk_id=b"alice-psk" if psk_ids else None, prf_func=prf)
    r = Responder(BOB, PSK_B, KMS_ID, psk_id=b"bob-psk" if psk_ids else None, prf_func=prf)
    req = i.request_init(csb_id=0x01020304, t=ntp_t(0), rand_i=b"\x11" * 16, policy=pol)
    rresp = kms.handle_request(req, pol)
    i.process_request_resp(rresp)
    entries = [GenericIdEntry.srtp(n + 1, 0x1000 + n, spi=bytes((n,))) for n in range(sessions)]
    ti = i.transfer_init(csb_id=0x0A0B0C0D, t=ntp_t(4), rand_i=b"\x22" * 16, sessions=entries,
                         responder=BOB)  # fmt: skip
    r.receive_transfer_init(ti)
    ri = r.resolve_init(csb_id=0x05060708, t=ntp_t(5), rand_r=b"\x33" * 16)
    rr = kms.handle_resolve(ri)
    r.process_resolve_resp(rr)
    tr = r.transfer_resp(t=ntp_t(6), rand_r=b"\x44" * 16)
    ik = i.process_transfer_resp(tr)
    return Run(req, rresp, ti, ri, rr, tr, ik, r.session_keys(), kms, i, r)


def corpus() -> list[bytes]:
    out: list[bytes] = []
    for flags in (FORKING, PLAIN):
        out += run(flags).all()
    out.append(build_error(decode(out[0]).header, [ErrNo.AUTH_FAILURE], t=ntp_t(9)))
    return out
