"""Every refusal reason of the contract's XkService.GetKeys, through the real server: the status
and ErrorInfo reason, exactly one alarm to a watcher (whatever the reason: a compromised CSCF
feeding garbage must be seen at once), exactly one audit record, and nothing released."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from firmware.mikey.codec import Ticket
from firmware.mikey.message import Message, decode, encode
from tests.calls import Call
from tests.xk.conftest import (
    ADMIN_NAME,
    ALICE,
    BOB,
    CAROL,
    DEADLINE,
    DF2_NAME,
    INITIATOR,
    RESPONDER,
    AlarmWatcher,
    Xk,
    error_reason,
    unique,
)

pytestmark = pytest.mark.softhsm

DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
HOUR = 3600.0


def flip_ticket_byte(transfer_init: bytes) -> bytes:
    msg = decode(transfer_init)
    payloads = list(msg.payloads)
    for i, p in enumerate(payloads):
        if isinstance(p, Ticket):
            data = bytearray(p.ticket_data)
            data[len(data) // 2] ^= 0x01
            payloads[i] = dataclasses.replace(p, ticket_data=bytes(data))
    return encode(Message(msg.header, tuple(payloads)))


def flip_last_byte(message: bytes) -> bytes:
    """The last byte of a MIKEY message is the last byte of its V payload's MAC."""
    return message[:-1] + bytes([message[-1] ^ 0x01])


@dataclass
class Request:
    transfer_init: bytes
    target: str
    role: int
    liid: str
    transfer_resp: bytes = b""
    client: str = "df2"
    advance: float = 0.0  # seconds the node's clock moves before the request


Build = Callable[[Xk, Call], Request]


@dataclass(frozen=True)
class Case:
    build: Build
    code: grpc.StatusCode
    reason: str
    caller: str = DF2_NAME


def _w(xk: Xk, target: str, **kw: Any) -> str:
    return xk.warrant(target, **kw)


CASES: dict[str, Case] = {
    # --- cannot be parsed: audit record and alarm ----------------------------------------------
    "garbage-transfer-init": Case(
        lambda xk, c: Request(b"\x01\x0e\x02garbage", ALICE, INITIATOR, _w(xk, ALICE)),
        INVALID, "MALFORMED_MESSAGE",
    ),
    "transfer-resp-as-transfer-init": Case(
        lambda xk, c: Request(c.transfer_resp, ALICE, INITIATOR, _w(xk, ALICE)),
        INVALID, "MALFORMED_MESSAGE",
    ),
    "garbage-transfer-resp": Case(
        lambda xk, c: Request(c.transfer_init, BOB, RESPONDER, _w(xk, BOB), b"\x01\x0f\x00junk"),
        INVALID, "MALFORMED_MESSAGE",
    ),
    "no-target-role": Case(
        lambda xk, c: Request(c.transfer_init, ALICE, 0, _w(xk, ALICE)),
        INVALID, "INVALID_REQUEST",
    ),
    "target-not-a-uri": Case(
        lambda xk, c: Request(c.transfer_init, "alice", INITIATOR, _w(xk, ALICE)),
        INVALID, "INVALID_REQUEST",
    ),
    # --- the ticket -----------------------------------------------------------------------------
    "ticket-byte-flipped": Case(
        lambda xk, c: Request(flip_ticket_byte(c.transfer_init), ALICE, INITIATOR, _w(xk, ALICE)),
        DENIED, "TICKET_INVALID",
    ),
    "ticket-expired": Case(
        lambda xk, c: Request(
            c.transfer_init, BOB, RESPONDER, _w(xk, BOB), c.transfer_resp, advance=HOUR + 120
        ),
        DENIED, "TICKET_EXPIRED",
    ),
    # --- the messages' MACs ---------------------------------------------------------------------
    "transfer-init-bad-v": Case(
        lambda xk, c: Request(flip_last_byte(c.transfer_init), ALICE, INITIATOR, _w(xk, ALICE)),
        DENIED, "MESSAGE_AUTH_FAILED",
    ),
    "transfer-resp-bad-v": Case(
        lambda xk, c: Request(
            c.transfer_init, BOB, RESPONDER, _w(xk, BOB), flip_last_byte(c.transfer_resp)
        ),
        DENIED, "MESSAGE_AUTH_FAILED",
    ),
    "transfer-resp-of-another-call": Case(
        lambda xk, c: Request(
            c.transfer_init, BOB, RESPONDER, _w(xk, BOB), xk.call().transfer_resp
        ),
        DENIED, "MESSAGE_AUTH_FAILED",
    ),
    # --- the target -----------------------------------------------------------------------------
    "initiator-role-for-the-responder": Case(
        lambda xk, c: Request(c.transfer_init, BOB, INITIATOR, _w(xk, BOB)),
        DENIED, "TARGET_MISMATCH",
    ),
    "responder-role-for-the-initiator": Case(
        lambda xk, c: Request(c.transfer_init, ALICE, RESPONDER, _w(xk, ALICE), c.transfer_resp),
        DENIED, "TARGET_MISMATCH",
    ),
    "carol-named-with-alice-as-initiator": Case(
        lambda xk, c: Request(c.transfer_init, CAROL, INITIATOR, _w(xk, CAROL)),
        DENIED, "TARGET_MISMATCH",
    ),
    "carol-named-with-bob-as-responder": Case(
        lambda xk, c: Request(c.transfer_init, CAROL, RESPONDER, _w(xk, CAROL), c.transfer_resp),
        DENIED, "TARGET_MISMATCH",
    ),
    "allowed-responder-who-never-resolved": Case(
        lambda xk, c: Request(
            xk.offer(forking=False, responders=(BOB, CAROL)), CAROL, RESPONDER, _w(xk, CAROL)
        ),
        DENIED, "TARGET_MISMATCH",
    ),
    "allowed-responder-with-the-answer-of-another": Case(
        lambda xk, c: _answered_by_bob_asked_for_carol(xk),
        DENIED, "TARGET_MISMATCH",
    ),
    # --- the warrant ----------------------------------------------------------------------------
    "no-warrant": Case(
        lambda xk, c: Request(c.transfer_init, ALICE, INITIATOR, unique("LIID")),
        DENIED, "NO_ACTIVE_WARRANT",
    ),
    "warrant-expired": Case(
        lambda xk, c: Request(
            c.transfer_init, ALICE, INITIATOR,
            _w(xk, ALICE, valid_from=xk.rn.clock.now - 2 * HOUR, valid_until=xk.rn.clock.now - 1),
        ),
        DENIED, "NO_ACTIVE_WARRANT",
    ),
    "warrant-not-yet-valid": Case(
        lambda xk, c: Request(
            c.transfer_init, ALICE, INITIATOR,
            _w(xk, ALICE, valid_from=xk.rn.clock.now + 60, valid_until=xk.rn.clock.now + HOUR),
        ),
        DENIED, "NO_ACTIVE_WARRANT",
    ),
    "warrant-naming-another-df2": Case(
        lambda xk, c: Request(
            c.transfer_init, ALICE, INITIATOR, _w(xk, ALICE, df2=("df2b.li.example.net",))
        ),
        DENIED, "NO_ACTIVE_WARRANT",
    ),
    "liid-of-another-target": Case(
        lambda xk, c: Request(c.transfer_init, ALICE, INITIATOR, _w(xk, BOB)),
        DENIED, "NO_ACTIVE_WARRANT",
    ),
    # --- the caller -----------------------------------------------------------------------------
    "admin-certificate": Case(
        lambda xk, c: Request(c.transfer_init, ALICE, INITIATOR, _w(xk, ALICE), client="admin"),
        DENIED, "ROLE_NOT_ALLOWED", ADMIN_NAME,
    ),
}  # fmt: skip


def _answered_by_bob_asked_for_carol(xk: Xk) -> Request:
    """A ticket allowing bob and carol, answered (and resolved) by bob, asked for as carol's."""
    call = xk.call(forking=True, responders=[BOB.encode(), CAROL.encode()])
    return Request(call.transfer_init, CAROL, RESPONDER, xk.warrant(CAROL), call.transfer_resp)


def sentinel(xk: Xk, watcher: AlarmWatcher) -> None:
    """A refusal whose alarm must be the next one the watcher sees."""
    corr = unique("sentinel")
    with pytest.raises(grpc.RpcError):
        xk.get_keys(b"", ALICE, INITIATOR, unique("no-such-liid"), correlation_id=corr)
    alarm = watcher.next()
    assert (alarm.reason, alarm.correlation_id) == ("NO_ACTIVE_WARRANT", corr)


@pytest.mark.parametrize("name", list(CASES))
def test_a_refusal_alarms_once_writes_one_record_and_releases_nothing(
    xk: Xk, watcher: AlarmWatcher, name: str
) -> None:
    case = CASES[name]
    call = xk.call(forking=True)
    req = case.build(xk, call)
    corr = unique(name)
    records = xk.node.audit.count
    xk.rn.clock.now += req.advance
    try:
        with pytest.raises(grpc.RpcError) as info:
            xk.get_keys(
                req.transfer_init, req.target, req.role, req.liid, req.transfer_resp, corr,
                client=req.client,
            )  # fmt: skip
    finally:
        xk.rn.clock.now -= req.advance
    err = info.value
    assert (err.code(), error_reason(err)) == (case.code, case.reason)
    # one audit record, naming the refusal
    assert xk.node.audit.count == records + 1
    (record,) = xk.audit_records()[records:]
    assert record["event"] == "KEY_REFUSED"
    assert record["fields"]["reason"] == case.reason
    assert record["fields"]["correlation_id"] == corr
    assert record["fields"]["liid"] == req.liid
    assert ",".join(record["fields"]["caller"]) == case.caller
    # one alarm, whatever the reason: the next alarm after it is the sentinel's
    alarm = watcher.next()
    assert (alarm.reason, alarm.caller, alarm.liid, alarm.correlation_id) == (
        case.reason, case.caller, req.liid, corr,
    )  # fmt: skip
    assert alarm.time.seconds == int(xk.rn.clock.now + req.advance)
    sentinel(xk, watcher)
    # nothing released: no key of the call in the status message or any trailing metadata
    said = [(err.details() or "").encode()] + [
        v if isinstance(v, bytes) else v.encode() for _, v in err.trailing_metadata() or ()
    ]
    for key in call.alice_keys:
        assert not any(key.tek in s or key.tek.hex().encode() in s for s in said)


def test_hsm_loss_refuses_unavailable_alarms_once_and_audits_loss_and_return(
    xk: Xk, watcher: AlarmWatcher
) -> None:
    call = xk.call()
    liid = xk.warrant(ALICE)
    records = xk.node.audit.count
    vault = xk.node.vault
    vault.device_removed("test: HSM unplugged")
    try:
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as info:
                xk.get_keys(call.transfer_init, ALICE, INITIATOR, liid, call.transfer_resp)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_reason(info.value) == "HSM_UNAVAILABLE"
    finally:
        vault.device_added()
    # the node alarms (the HSM, and the audit log it keys), each refused request's own alarm
    # (with its LIID), the node alarms again; the log is writable again with the first record
    alarms = [watcher.next() for _ in range(6)]
    assert [(a.reason, a.liid) for a in alarms] == [
        ("HSM_REMOVED", ""),
        ("AUDIT_UNAVAILABLE", ""),
        ("HSM_UNAVAILABLE", liid),
        ("HSM_UNAVAILABLE", liid),
        ("HSM_RESTORED", ""),
        ("AUDIT_RESTORED", ""),
    ]
    # the loss is recorded once the HSM (which keys the audit log) is back, by its own thread
    for thread in threading.enumerate():
        if thread.name == "hsm-audit":
            thread.join(timeout=DEADLINE)
    events = [r["event"] for r in xk.audit_records()[records:]]
    assert events == ["HSM_REMOVED", "HSM_RESTORED"]
    sentinel(xk, watcher)
    # and releases resume
    answer = xk.get_keys(call.transfer_init, ALICE, INITIATOR, liid, call.transfer_resp)
    assert [s.session_key for s in answer.sessions] == [k.tek for k in call.alice_keys]


def test_a_refusal_while_the_audit_log_cannot_be_written_still_alarms_at_once(
    xk: Xk, watcher: AlarmWatcher
) -> None:
    """The HSM keys the audit log: without it no record can be written, yet a refused request
    (here: no warrant, decided before the HSM is needed) must still reach the watchers."""
    corr, liid = unique("audit-down"), unique("no-such-liid")
    records = xk.node.audit.count
    vault = xk.node.vault
    vault.device_removed("test: HSM unplugged")
    try:
        with pytest.raises(grpc.RpcError) as info:
            xk.get_keys(b"\x01", ALICE, INITIATOR, liid, correlation_id=corr)
    finally:
        vault.device_added()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(info.value) == "AUDIT_UNAVAILABLE"
    alarms = [watcher.next() for _ in range(5)]
    assert [(a.reason, a.correlation_id) for a in alarms] == [
        ("HSM_REMOVED", ""),
        ("AUDIT_UNAVAILABLE", ""),
        ("NO_ACTIVE_WARRANT", corr),
        ("HSM_RESTORED", ""),
        ("AUDIT_RESTORED", ""),
    ]
    assert alarms[2].liid == liid
    for thread in threading.enumerate():
        if thread.name == "hsm-audit":
            thread.join(timeout=DEADLINE)
    events = [r["event"] for r in xk.audit_records()[records:]]
    assert events == ["HSM_REMOVED", "HSM_RESTORED"]  # the refusal's record could not be written
    sentinel(xk, watcher)
