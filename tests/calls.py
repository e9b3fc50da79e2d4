"""A whole call (alice calls bob) through any KMS `exchange(bytes) -> bytes`, UE side from
firmware.mikey.exchange. Used by core tests (in-process) and gRPC tests (through the server)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from firmware.core.freshness import unix_to_ntp64
from firmware.mikey.codec import GenericIdEntry, RoleIdentity, TicketPolicy, Timestamp, TpFlags
from firmware.mikey.constants import IdRole, IdType, MacAlg, TsType
from firmware.mikey.exchange import Initiator, Responder
from firmware.mikey.prf import PrfFunc
from firmware.mikey.transfer import SessionKey

KMS = b"sip:kms.ims.example.net"
ALICE = "sip:alice@ims.example.net"
BOB = "sip:bob@ims.example.net"
ALICE_PSK = bytes(range(32))
BOB_PSK = bytes(range(32, 64))

Exchange = Callable[[bytes], bytes]


def t_at(unix: float) -> Timestamp:
    return Timestamp(TsType.NTP_UTC, unix_to_ntp64(unix).to_bytes(8, "big"))


def requested_policy(prf: PrfFunc, forking: bool, responders: list[bytes]) -> TicketPolicy:
    flags = TpFlags.H | TpFlags.E | (TpFlags.I | TpFlags.F if forking else TpFlags(0))
    return TicketPolicy(
        1, 1, 1, prf, flags, tuple(RoleIdentity(IdRole.IDRr, IdType.URI, r) for r in responders)
    )


def ues(prf: PrfFunc) -> tuple[Initiator, Responder]:
    mac = MacAlg.HMAC_SHA_256_256 if prf is PrfFunc.PRF_HMAC_SHA_256 else MacAlg.HMAC_SHA_1_160
    alice = Initiator(ALICE.encode(), ALICE_PSK, KMS, prf_func=prf, mac_alg=mac)
    bob = Responder(BOB.encode(), BOB_PSK, KMS, prf_func=prf, mac_alg=mac)
    return alice, bob


@dataclass
class Call:
    request_init: bytes
    request_resp: bytes
    transfer_init: bytes
    resolve_init: bytes
    resolve_resp: bytes
    transfer_resp: bytes
    alice_keys: list[SessionKey]
    bob_keys: list[SessionKey]


def full_call(
    exchange: Exchange,
    now: float,
    prf: PrfFunc = PrfFunc.MIKEY_1,
    forking: bool = True,
    sessions: int = 1,
    responders: list[bytes] | None = None,
) -> Call:
    alice, bob = ues(prf)

    def rand() -> bytes:
        return os.urandom(32)  # RFC 6043 12.1: at least the PSK's 32 bytes

    req = alice.request_init(
        csb_id=int.from_bytes(os.urandom(4), "big"),
        t=t_at(now),
        rand_i=rand(),
        policy=requested_policy(prf, forking, responders or [BOB.encode()]),
    )
    resp = exchange(req)
    alice.process_request_resp(resp)
    entries = [GenericIdEntry.srtp(i + 1, 0x1000 + i, roc=0, seq=1) for i in range(sessions)]
    ti = alice.transfer_init(
        csb_id=0x11223344, t=t_at(now), rand_i=rand(), sessions=entries, responder=BOB.encode()
    )
    bob.receive_transfer_init(ti)
    ri = bob.resolve_init(csb_id=int.from_bytes(os.urandom(4), "big"), t=t_at(now), rand_r=rand())
    rr = exchange(ri)
    bob.process_resolve_resp(rr)
    tr = bob.transfer_resp(t=t_at(now), rand_r=rand())
    alice_keys = alice.process_transfer_resp(tr)
    return Call(req, resp, ti, ri, rr, tr, alice_keys, bob.session_keys())
