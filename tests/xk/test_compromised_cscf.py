"""A compromised P/S-CSCF feeds DF2 the key management data of calls that have nothing to do with
the target: 1,000 such GetKeys, mixed with 100 valid ones for the target's own calls, from a few
concurrent DF2 clients. Every unrelated request is refused with an alarm (seen by a watcher, once
each) and an audit record; every valid one is answered with the keys the UEs use."""

from __future__ import annotations

import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.mikey.codec import GenericIdEntry
from firmware.mikey.exchange import Initiator, Responder
from firmware.mikey.prf import PrfFunc
from tests.api.conftest import exchange_via
from tests.calls import ALICE, ALICE_PSK, BOB_PSK, KMS, requested_policy, t_at
from tests.xk.conftest import (
    BOB,
    CAROL,
    CAROL_PSK,
    DEADLINE,
    DF2_NAME,
    INITIATOR,
    RESPONDER,
    AlarmWatcher,
    Xk,
    error_reason,
    unique,
)
from tests.xk.test_refusals import flip_last_byte, flip_ticket_byte

pytestmark = pytest.mark.softhsm

UNRELATED, VALID, CLIENTS = 1000, 100, 4
MISMATCHED = UNRELATED - 2 * VALID  # others' calls; the rest forges the target's own
ANSWERED = 100  # of the others' calls, answered by their responder


@dataclass
class Offer:
    transfer_init: bytes
    transfer_resp: bytes = b""
    keys: list[tuple[int, bytes, bytes]] = field(default_factory=list)


def make_offer(
    exchange, now: float, caller: tuple[str, bytes], callee: tuple[str, bytes], answer: bool
) -> Offer:  # type: ignore[no-untyped-def]
    """caller -> callee through the KMS; with `answer` the callee resolves and answers."""
    ini = Initiator(caller[0].encode(), caller[1], KMS)
    res = Responder(callee[0].encode(), callee[1], KMS)
    ini.process_request_resp(
        exchange(
            ini.request_init(
                csb_id=int.from_bytes(os.urandom(4), "big"),
                t=t_at(now),
                rand_i=os.urandom(32),
                policy=requested_policy(PrfFunc.MIKEY_1, False, [callee[0].encode()]),
            )
        )
    )
    init = ini.transfer_init(
        csb_id=int.from_bytes(os.urandom(4), "big"),
        t=t_at(now),
        rand_i=os.urandom(32),
        sessions=[GenericIdEntry.srtp(1, 0x1000)],
        responder=callee[0].encode(),
    )
    if not answer:
        return Offer(init)
    res.receive_transfer_init(init)
    res.process_resolve_resp(
        exchange(res.resolve_init(csb_id=1, t=t_at(now), rand_r=os.urandom(32)))
    )
    resp = res.transfer_resp(t=t_at(now), rand_r=os.urandom(32))
    keys = [(k.cs_id, k.tek, k.salt) for k in ini.process_transfer_resp(resp)]
    assert keys == [(k.cs_id, k.tek, k.salt) for k in res.session_keys()]
    return Offer(init, resp, keys)


@dataclass(frozen=True)
class Job:
    correlation_id: str
    offer: Offer
    role: int
    with_resp: bool
    expect: str  # "" for a valid request, else the refusal reason


def test_unrelated_data_from_a_compromised_cscf_is_refused_and_alarmed_valid_data_answered(
    xk: Xk, watcher: AlarmWatcher
) -> None:
    rng = random.Random(5)
    now = xk.rn.clock.now
    alice, bob, carol = (ALICE, ALICE_PSK), (BOB, BOB_PSK), (CAROL, CAROL_PSK)
    liid = xk.warrant(CAROL)
    ue_channels = [xk.rn.channel("ue") for _ in range(CLIENTS)]
    li_channels = [xk.rn.channel("li", "df2") for _ in range(CLIENTS)]
    try:
        exchanges = [exchange_via(kms_pb2_grpc.TicketServiceStub(ch)) for ch in ue_channels]

        def offers(n: int, parties, answer: bool) -> list[Offer]:  # type: ignore[no-untyped-def]
            with ThreadPoolExecutor(CLIENTS) as pool:
                return list(
                    pool.map(
                        lambda i: make_offer(exchanges[i % CLIENTS], now, *parties, answer),
                        range(n),
                    )
                )

        # The target's own calls: carol calls bob, alice calls carol (carol answers).
        own_out = offers(VALID // 2, (carol, bob), True)
        own_in = offers(VALID // 2, (alice, carol), True)
        own = own_out + own_in
        # Calls of others, alice -> bob, each fed once; some answered by bob (TRANSFER_RESP).
        others = offers(MISMATCHED - ANSWERED, (alice, bob), False)
        others += offers(ANSWERED, (alice, bob), True)

        jobs = [Job(unique("valid"), o, INITIATOR, rng.random() < 0.5, "") for o in own_out]
        jobs += [Job(unique("valid"), o, RESPONDER, rng.random() < 0.5, "") for o in own_in]
        # The CSCF names carol in either role on others' data ...
        for offer in others:
            role = rng.choice([INITIATOR, RESPONDER])
            jobs.append(Job(unique("unrelated"), offer, role, True, "TARGET_MISMATCH"))
        # ... and forges the ticket or the MAC of carol's own calls.
        for o in own:
            forged = Offer(flip_ticket_byte(o.transfer_init))
            jobs.append(Job(unique("unrelated"), forged, INITIATOR, False, "TICKET_INVALID"))
            forged = Offer(flip_last_byte(o.transfer_init))
            jobs.append(Job(unique("unrelated"), forged, INITIATOR, False, "MESSAGE_AUTH_FAILED"))
        rng.shuffle(jobs)
        stubs = [kms_pb2_grpc.XkServiceStub(ch) for ch in li_channels]
        records = xk.node.audit.count

        def run(index: int) -> tuple[Job, object]:
            job = jobs[index]
            request = kms_pb2.GetKeysRequest(
                target_identity=CAROL,
                target_role=job.role,
                transfer_init=job.offer.transfer_init,
                transfer_resp=job.offer.transfer_resp if job.with_resp else b"",
                liid=liid,
                correlation_id=job.correlation_id,
            )
            try:
                return job, stubs[index % CLIENTS].GetKeys(request, timeout=DEADLINE)
            except grpc.RpcError as err:
                return job, err

        with ThreadPoolExecutor(CLIENTS) as pool:
            outcomes = list(pool.map(run, range(len(jobs))))
    finally:
        for ch in ue_channels + li_channels:
            ch.close()

    for job, outcome in outcomes:
        if not job.expect:
            assert not isinstance(outcome, grpc.RpcError), (job.correlation_id, outcome)
            got = [(s.cs_id, s.session_key, s.salt) for s in outcome.sessions]  # type: ignore[attr-defined]
            assert got == job.offer.keys
        else:
            assert isinstance(outcome, grpc.RpcError), job.correlation_id
            assert outcome.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error_reason(outcome) == job.expect, job.correlation_id
    expected = {job.correlation_id: job.expect for job in jobs if job.expect}
    assert len(expected) == UNRELATED

    # every unrelated request raised exactly one alarm at once; the sentinel comes after them all
    corr = unique("sentinel")
    with pytest.raises(grpc.RpcError):
        xk.get_keys(b"", CAROL, INITIATOR, unique("no-such-liid"), correlation_id=corr)
    alarms = []
    while (alarm := watcher.next()).correlation_id != corr:
        alarms.append(alarm)
    assert len(alarms) == UNRELATED
    assert {a.correlation_id: a.reason for a in alarms} == expected
    assert {(a.caller, a.liid) for a in alarms} == {(DF2_NAME, liid)}

    # one audit record per request, each naming its outcome
    events = Counter(
        (r["event"], r["fields"]["correlation_id"].split("-")[0])
        for r in xk.audit_records()[records : records + len(jobs)]
    )
    assert events == {("KEY_REFUSED", "unrelated"): UNRELATED, ("KEY_RELEASE", "valid"): VALID}
