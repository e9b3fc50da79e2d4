"""A KMS world in memory for the core's security tests: TicketCore and KeyRelease on FakeVault,
MemoryStore and MemoryAudit, three provisioned users, and UEs from firmware.mikey.exchange.

Besides honest calls it can make what an attacker who holds key material can make: a TRANSFER_RESP
forged by the initiator (who holds MPKi and, with key forking, MPKr) naming any responder.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from firmware.core.admin import Admin
from firmware.core.freshness import ReplayCache
from firmware.core.tickets import TicketCore, TicketSettings
from firmware.core.xk import GetKeysRequest, KeyRelease, ReleasedKeys, TargetRole, XkSettings
from firmware.mikey.codec import GenericIdEntry, RoleIdentity
from firmware.mikey.constants import RandRole
from firmware.mikey.crypto import fork_mpkr, message_keys
from firmware.mikey.exchange import Initiator, Responder
from firmware.mikey.kms import sign_message
from firmware.mikey.message import decode
from firmware.mikey.prf import PrfFunc
from firmware.mikey.transfer import SessionKey
from hsm.fake import FakeVault
from tests.calls import ALICE, ALICE_PSK, BOB, BOB_PSK, KMS, requested_policy, t_at, ues
from tests.core.fakes import DF2, OPERATOR, MemoryAudit, MemoryStore

CAROL = "sip:carol@ims.example.net"
CAROL_PSK = bytes(range(64, 96))
NOW = 1_900_000_000.0
SKEW = 60.0
PSKS = {ALICE: ALICE_PSK, BOB: BOB_PSK, CAROL: CAROL_PSK}


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Offer:
    """Alice's side of a call: her UE (holding MPKi, MPKr) and her TRANSFER_INIT."""

    alice: Initiator
    transfer_init: bytes


@dataclass
class Answer:
    responder: Responder
    transfer_resp: bytes

    @property
    def keys(self) -> list[SessionKey]:
        return self.responder.session_keys()


class Ues:
    """Alice, bob and carol against any KMS `exchange(bytes) -> bytes` at `clock()`; also what a
    key holder can forge (see the module docstring)."""

    def __init__(self, exchange: Callable[[bytes], bytes], clock: Callable[[], float]) -> None:
        self.exchange, self.now = exchange, clock

    def offer(
        self,
        forking: bool = True,
        responders: tuple[str, ...] = (BOB,),
        prf: PrfFunc = PrfFunc.MIKEY_1,
        sent_at: float | None = None,
    ) -> Offer:
        alice, _ = ues(prf)
        now = self.now()
        alice.process_request_resp(
            self.exchange(
                alice.request_init(
                    csb_id=int.from_bytes(os.urandom(4), "big"),
                    t=t_at(now),
                    rand_i=os.urandom(32),
                    policy=requested_policy(prf, forking, [r.encode() for r in responders]),
                )
            )
        )
        ti = alice.transfer_init(
            csb_id=int.from_bytes(os.urandom(4), "big"),
            t=t_at(now if sent_at is None else sent_at),
            rand_i=os.urandom(32),
            sessions=[GenericIdEntry.srtp(1, 0x1000, roc=0, seq=1)],
            responder=responders[0].encode(),
        )
        return Offer(alice, ti)

    def answer(self, offer: Offer, who: str = BOB) -> Answer:
        """`who` resolves the ticket at the KMS (a resolution record) and answers."""
        bob = Responder(who.encode(), PSKS[who], KMS, prf_func=offer.alice.prf_func,
                        mac_alg=offer.alice.mac_alg)  # fmt: skip
        bob.receive_transfer_init(offer.transfer_init)
        ri = bob.resolve_init(
            csb_id=int.from_bytes(os.urandom(4), "big"),
            t=t_at(self.now()),
            rand_r=os.urandom(32),
        )
        bob.process_resolve_resp(self.exchange(ri))
        return Answer(bob, bob.transfer_resp(t=t_at(self.now()), rand_r=os.urandom(32)))

    def forged_answer(
        self, offer: Offer, naming: str | None, rand_kms: bytes | None = None
    ) -> bytes:
        """A TRANSFER_RESP the initiator makes herself, naming `naming` as the responder (None:
        no IDRr at all, without forking): keyed from MPKi, or with key forking from MPKr' for
        (naming, rand_kms) she derives from MPKr."""
        alice = offer.alice
        if naming is None:
            return self._nameless_answer(offer)
        fake = Responder(naming.encode(), bytes(32), KMS, prf_func=alice.prf_func,
                         mac_alg=alice.mac_alg)  # fmt: skip
        fake.init = decode(offer.transfer_init)
        fake.mpki = alice.mpki
        if alice.mpkr is not None:
            assert alice.ticket is not None
            modifier = rand_kms or os.urandom(16)
            fake.modifier = (naming.encode(), modifier)
            fake.mpkr_forked = fork_mpkr(
                alice.ticket.policy.prf_func, alice.mpkr, naming.encode(), modifier
            )
        return fake.transfer_resp(t=t_at(self.now()), rand_r=os.urandom(32))

    def transfer_init_as(self, offer: Offer, initiator: str) -> bytes:
        """Alice's ticket in a TRANSFER_INIT she MACs herself (she holds MPKi) naming another
        initiator (IDRi = `initiator`)."""
        alice = offer.alice
        other = dataclasses.replace(alice, identity=initiator.encode())
        return other.transfer_init(
            csb_id=int.from_bytes(os.urandom(4), "big"),
            t=t_at(self.now()),
            rand_i=os.urandom(32),
            sessions=[GenericIdEntry.srtp(1, 0x1000, roc=0, seq=1)],
            responder=BOB.encode(),
        )

    def _nameless_answer(self, offer: Offer) -> bytes:
        """A well-formed TRANSFER_RESP (RFC 6043 6.1.1 map, T, RANDRr) without IDRr, MACed
        with MPKi as anybody holding it can."""
        init = decode(offer.transfer_init)
        fake = Responder(b"sip:nobody@ims.example.net", bytes(32), KMS,
                         prf_func=offer.alice.prf_func, mac_alg=offer.alice.mac_alg)  # fmt: skip
        fake.init, fake.mpki = init, offer.alice.mpki
        shaped = decode(fake.transfer_resp(t=t_at(self.now()), rand_r=os.urandom(32)))
        kept = [p for p in shaped.payloads[:-1] if not isinstance(p, RoleIdentity)]
        key = message_keys(init.header.prf_func, offer.alice.mpki, init.header.csb_id,
                           response=True, rand_i=init.randr(RandRole.RANDRi), rand_r=None,
                           mac_alg=offer.alice.mac_alg).auth_key  # fmt: skip
        return sign_message(shaped.header, kept, key, offer.alice.mac_alg, init.raw)


@dataclass
class World:
    clock: Clock = field(default_factory=Clock)
    vault: FakeVault = field(default_factory=FakeVault)
    store: MemoryStore = field(default_factory=MemoryStore)
    audit: MemoryAudit = field(default_factory=MemoryAudit)
    alarms: Any = None  # the AlarmSink TicketCore is built with (None: it raises none)

    def __post_init__(self) -> None:
        self.admin = Admin(self.vault, self.store, self.audit, self.clock, 86400, SKEW)
        for identity, psk in PSKS.items():
            self.admin.put_user(OPERATOR, identity, [], psk, b"")
        self.core = TicketCore(
            self.vault,
            self.store,
            ReplayCache(SKEW, NOW - 100),
            TicketSettings(KMS.decode(), clock_skew=SKEW, key_forking=False),
            self.clock,
            alarms=self.alarms,
        )
        self.release = KeyRelease(
            self.vault, self.store, self.audit, XkSettings(KMS.decode(), SKEW), self.clock
        )
        self.ues = Ues(self.core.exchange, self.clock)

    def __getattr__(self, name: str) -> Any:  # offer, answer, forged_answer, ...
        return getattr(self.ues, name)

    def warrant(
        self,
        target: str,
        df2: tuple[str, ...] = ("df2.li.example.net",),
        valid_from: float | None = None,
        valid_until: float | None = None,
        liid: str = "LIID-1",
    ) -> str:
        now = self.clock.now
        self.admin.put_warrant(
            OPERATOR,
            liid,
            target,
            now - 60 if valid_from is None else valid_from,
            now + 86400 if valid_until is None else valid_until,
            list(df2),
        )
        return liid

    def get_keys(
        self,
        transfer_init: bytes,
        target: str,
        role: TargetRole | None,
        liid: str = "LIID-1",
        transfer_resp: bytes = b"",
        caller: object = DF2,
        correlation_id: str = "corr-1",
    ) -> ReleasedKeys:
        return self.release.get_keys(
            caller,  # type: ignore[arg-type]
            GetKeysRequest(target, role, transfer_init, transfer_resp, liid, correlation_id),
        )


def keys_of(released: ReleasedKeys) -> list[tuple[int, bytes, bytes]]:
    return [(s.cs_id, s.key, s.salt) for s in released.sessions]


def session(keys: list[SessionKey]) -> list[tuple[int, bytes, bytes]]:
    return [(k.cs_id, k.tek, k.salt) for k in keys]


__all__ = ["ALICE", "BOB", "CAROL", "NOW", "SKEW", "Ues", "World", "keys_of", "session"]
