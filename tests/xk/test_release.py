"""GetKeys releases, through the real server: for the initiator from TRANSFER_INIT alone, for the
responder from TRANSFER_RESP or from the KMS's own resolution record, with and without key
forking, for one and two crypto sessions; the keys are the ones both UEs derived."""

from __future__ import annotations

import os

import grpc
import pytest

from firmware.core.ours import ticket_id
from firmware.core.ports import Resolution
from firmware.mikey.codec import Ticket
from firmware.mikey.message import decode
from firmware.mikey.prf import PrfFunc
from tests.xk.conftest import ALICE, BOB, DF2_NAME, INITIATOR, RESPONDER, Xk, error_reason, unique

pytestmark = pytest.mark.softhsm


def _keys(answer) -> list[tuple[int, bytes, bytes]]:  # type: ignore[no-untyped-def]
    return [(s.cs_id, s.session_key, s.salt) for s in answer.sessions]


# (target, role, with TRANSFER_RESP)
KINDS = {
    "initiator-init-only": (ALICE, INITIATOR, False),
    "initiator-with-resp": (ALICE, INITIATOR, True),
    "responder-with-resp": (BOB, RESPONDER, True),
    "responder-by-resolution": (BOB, RESPONDER, False),
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("forking", [True, False], ids=["forking", "no-forking"])
@pytest.mark.parametrize("sessions", [1, 2])
@pytest.mark.parametrize("prf", list(PrfFunc), ids=lambda p: p.name)
def test_every_valid_request_gets_the_keys_both_ues_use(
    xk: Xk, prf: PrfFunc, sessions: int, forking: bool, kind: str
) -> None:
    target, role, with_resp = KINDS[kind]
    call = xk.call(prf, forking, sessions)
    expected = [(k.cs_id, k.tek, k.salt) for k in call.alice_keys]
    assert expected == [(k.cs_id, k.tek, k.salt) for k in call.bob_keys]
    assert [cs for cs, _, _ in expected] == list(range(1, sessions + 1))
    liid = xk.warrant(target)
    before = xk.node.audit.count
    resp = call.transfer_resp if with_resp else b""
    answer = xk.get_keys(call.transfer_init, target, role, liid, resp)
    assert _keys(answer) == expected
    assert answer.csb_id == 0x11223344
    assert answer.valid_until.seconds > xk.rn.clock.now
    (released,) = xk.audit_records()[before:]
    assert released["event"] == "KEY_RELEASE"
    assert released["fields"]["target"] == target
    assert released["fields"]["cs_ids"] == list(range(1, sessions + 1))
    log = xk.rn.cfg.audit_log.read_bytes()
    for k in call.alice_keys:
        assert k.tek not in log and k.tek.hex().encode() not in log


@pytest.mark.parametrize("target", [ALICE, BOB])
def test_a_forked_release_from_a_record_without_the_responders_id_data_is_refused(
    xk: Xk, target: str
) -> None:
    """TGK' needs the exact IDRr bytes bob sent; a resolution record without them (a row from
    before the store kept them) gives MALFORMED_MESSAGE, never keys nobody uses."""
    transfer_init = xk.offer(forking=True)
    ticket = decode(transfer_init).require(Ticket)
    xk.rn.store.add_resolution(
        Resolution(ticket_id(ticket.ticket_data), BOB, os.urandom(16), xk.rn.clock.now, b"")
    )
    role = INITIATOR if target == ALICE else RESPONDER
    liid = xk.warrant(target)
    before = xk.node.audit.count
    with pytest.raises(grpc.RpcError) as info:
        xk.get_keys(transfer_init, target, role, liid)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(info.value) == "MALFORMED_MESSAGE"
    assert "ID Data" in (info.value.details() or "")
    assert [r["event"] for r in xk.audit_records()[before:]] == ["KEY_REFUSED"]


def test_a_target_spelled_otherwise_is_compared_in_canonical_form(xk: Xk) -> None:
    call = xk.call(forking=False)
    liid = xk.warrant("sip:alice@IMS.Example.NET")
    answer = xk.get_keys(call.transfer_init, "sip:alice@ims.EXAMPLE.net", INITIATOR, liid)
    assert _keys(answer) == [(k.cs_id, k.tek, k.salt) for k in call.alice_keys]


def test_the_correlation_id_and_liid_are_echoed_in_the_release_record(xk: Xk) -> None:
    call = xk.call()
    liid, corr = xk.warrant(BOB), unique("corr")
    xk.get_keys(call.transfer_init, BOB, RESPONDER, liid, call.transfer_resp, corr)
    record = xk.audit_records()[-1]
    assert record["event"] == "KEY_RELEASE"
    assert record["fields"]["liid"] == liid
    assert record["fields"]["correlation_id"] == corr
    assert ",".join(record["fields"]["caller"]) == DF2_NAME
    assert record["fields"]["role"] == "RESPONDER"
