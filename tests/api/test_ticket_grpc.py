"""TicketService through the real TLS server on SoftHSM: full calls, every refusal, rotation."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.core.ports import KeyState
from firmware.mikey.codec import GenericIdEntry, Ticket
from firmware.mikey.constants import DataType, ErrNo
from firmware.mikey.exchange import Initiator
from firmware.mikey.message import Message, decode, encode
from firmware.mikey.prf import PrfFunc
from hsm.softhsm import SoftHsmToken
from hsm.vault import VaultSettings
from tests.api.conftest import RunningNode, exchange_via, start_node
from tests.calls import ALICE, ALICE_PSK, BOB, KMS, full_call, requested_policy, t_at, ues
from tests.core.fakes import OPERATOR

pytestmark = pytest.mark.softhsm


def _rpc_error(stub, data: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.Exchange(kms_pb2.MikeyMessage(data=data), timeout=10)
    return info.value


def _mikey_error(err: grpc.RpcError) -> int:
    return int(dict(err.trailing_metadata())["mikey-error"])


def _error_answer(data: bytes) -> list[int]:
    msg = decode(data)
    assert msg.header.data_type == DataType.ERROR
    return [p.err_no for p in msg.payloads if type(p).__name__ == "ErrorPayload"]


@pytest.mark.parametrize("prf", list(PrfFunc))
@pytest.mark.parametrize("forking", [True, False])
@pytest.mark.parametrize("sessions", [1, 2])
def test_a_full_call_gives_both_ues_the_same_keys(
    tmp_path: Path,
    softhsm_token: SoftHsmToken,
    vault_settings: VaultSettings,
    _vault_keys: None,
    prf: PrfFunc,
    forking: bool,
    sessions: int,
) -> None:
    rn = start_node(tmp_path, softhsm_token, vault_settings, forking=False)
    try:
        ch, stub = rn.exchanger()
        with ch:
            call = full_call(exchange_via(stub), rn.clock.now, prf, forking, sessions)
        alice = [(k.cs_id, k.tek, k.salt) for k in call.alice_keys]
        assert alice == [(k.cs_id, k.tek, k.salt) for k in call.bob_keys]
        assert len(alice) == sessions
        granted = decode(call.request_resp).require(Ticket).policy
        assert bool(granted.flags & 0x040) == forking
        assert rn.store.resolutions is not None
    finally:
        rn.node.stop(1.0)


def test_key_forking_is_granted_by_default_even_when_not_requested(running: RunningNode) -> None:
    ch, stub = running.exchanger()
    with ch:
        call = full_call(exchange_via(stub), running.clock.now, forking=False)
    assert decode(call.request_resp).require(Ticket).policy.flags & 0x040
    assert call.alice_keys == call.bob_keys


def _reflect(channel: grpc.Channel) -> set[str]:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    return {s.name for r in replies for s in r.list_services_response.service}


def test_health_serves_anonymously_and_the_ue_listener_serves_no_reflection(
    running: RunningNode,
) -> None:
    with running.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        answer = health.Check(health_pb2.HealthCheckRequest(service="kms.v1.TicketService"))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            _reflect(ch)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_on_the_li_listener_answers_only_a_caller_holding_a_role(
    running: RunningNode,
) -> None:
    from firmware.devpki import issue

    issue(running.pki, "norole", [x509.DNSName("nobody.li.example.net")])
    with running.channel("li", "admin") as ch:
        assert {"kms.v1.XkService", "kms.v1.AdminService"} <= _reflect(ch)
    with running.channel("li", "norole") as ch, pytest.raises(grpc.RpcError) as info:
        _reflect(ch)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _request(prf: PrfFunc = PrfFunc.MIKEY_1, now: float = 0.0, initiator: Initiator | None = None):
    alice = initiator or ues(prf)[0]
    return alice, alice.request_init(
        csb_id=7,
        t=t_at(now),
        rand_i=os.urandom(32),
        policy=requested_policy(prf, True, [BOB.encode()]),
    )


def test_refuses_a_wrong_psk_without_a_mikey_answer(running: RunningNode) -> None:
    alice = Initiator(ALICE.encode(), os.urandom(32), KMS)
    _, data = _request(now=running.clock.now, initiator=alice)
    ch, stub = running.exchanger()
    with ch:
        err = _rpc_error(stub, data)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _mikey_error(err) == ErrNo.AUTH_FAILURE


def test_refuses_an_unknown_user(running: RunningNode) -> None:
    carol = Initiator(b"sip:carol@ims.example.net", ALICE_PSK, KMS)
    _, data = _request(now=running.clock.now, initiator=carol)
    ch, stub = running.exchanger()
    with ch:
        err = _rpc_error(stub, data)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _mikey_error(err) == ErrNo.AUTH_FAILURE


def test_refuses_a_replayed_request(running: RunningNode) -> None:
    _, data = _request(now=running.clock.now)
    ch, stub = running.exchanger()
    with ch:
        stub.Exchange(kms_pb2.MikeyMessage(data=data), timeout=10)
        err = _rpc_error(stub, data)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _mikey_error(err) == ErrNo.INVALID_TS


def test_refuses_a_stale_timestamp(running: RunningNode) -> None:
    _, data = _request(now=running.clock.now - 120)
    ch, stub = running.exchanger()
    with ch:
        err = _rpc_error(stub, data)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _mikey_error(err) == ErrNo.INVALID_TS


def test_refuses_garbage_bytes_as_invalid_argument(running: RunningNode) -> None:
    ch, stub = running.exchanger()
    with ch:
        err = _rpc_error(stub, b"\x01\x0b\x05\x80garbage")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mikey-error" in dict(err.trailing_metadata())


def test_answers_an_idri_that_is_not_the_users_with_a_mikey_error(running: RunningNode) -> None:
    # Alice authenticates (IDRpsk names her key) but claims bob's identity as IDRi.
    liar = Initiator(BOB.encode(), ALICE_PSK, KMS, psk_id=ALICE.encode())
    _, data = _request(now=running.clock.now, initiator=liar)
    ch, stub = running.exchanger()
    with ch:
        answer = stub.Exchange(kms_pb2.MikeyMessage(data=data), timeout=10).data
    assert _error_answer(answer) == [ErrNo.INVALID_ID]


def test_an_alias_of_the_user_is_accepted_as_idri(running: RunningNode) -> None:
    alias = Initiator(b"tel:+1-555-0100", ALICE_PSK, KMS, psk_id=ALICE.encode())
    _, data = _request(now=running.clock.now, initiator=alias)
    ch, stub = running.exchanger()
    with ch:
        answer = stub.Exchange(kms_pb2.MikeyMessage(data=data), timeout=10).data
    assert decode(answer).header.data_type == DataType.REQUEST_RESP


def _transfer_init(ex, now: float, responders=(BOB,), after_request=None) -> bytes:
    """Alice gets a ticket (for `responders`) and builds her TRANSFER_INIT to bob."""
    alice = ues(PrfFunc.MIKEY_1)[0]
    policy = requested_policy(PrfFunc.MIKEY_1, True, [r.encode() for r in responders])
    alice.process_request_resp(
        ex(alice.request_init(csb_id=1, t=t_at(now), rand_i=os.urandom(32), policy=policy))
    )
    if after_request is not None:
        after_request()
    return alice.transfer_init(
        csb_id=2,
        t=t_at(now),
        rand_i=os.urandom(32),
        sessions=[GenericIdEntry.srtp(1, 5)],
        responder=BOB.encode(),
    )


def _resolve(ex, ti: bytes, now: float) -> bytes:
    """Bob resolves the ticket of `ti`; returns the KMS's answer."""
    bob = ues(PrfFunc.MIKEY_1)[1]
    bob.receive_transfer_init(ti)
    return ex(bob.resolve_init(csb_id=3, t=t_at(now), rand_r=os.urandom(32)))


def _resolve_refusal(running: RunningNode, responders=(BOB,), tamper=None, advance=0.0) -> bytes:
    """Run a call up to RESOLVE_INIT and return the KMS answer to it."""
    ch, stub = running.exchanger()
    with ch:
        ex = exchange_via(stub)
        ti = _transfer_init(ex, running.clock.now, responders)
        running.clock.now += advance
        return _resolve(ex, tamper(ti) if tamper else ti, running.clock.now)


def test_refuses_a_responder_the_ticket_does_not_allow(running: RunningNode) -> None:
    answer = _resolve_refusal(running, responders=("sip:carol@ims.example.net",))
    assert _error_answer(answer) == [ErrNo.INVALID_ID]
    assert running.store.count_users() == 2


def _flip_ticket_byte(ti: bytes) -> bytes:
    msg = decode(ti)
    payloads = list(msg.payloads)
    for i, p in enumerate(payloads):
        if isinstance(p, Ticket):
            data = bytearray(p.ticket_data)
            data[-25] ^= 0x01
            payloads[i] = dataclasses.replace(p, ticket_data=bytes(data))
    return encode(Message(msg.header, tuple(payloads)))


def test_refuses_a_tampered_ticket_and_stores_no_resolution(running: RunningNode) -> None:
    answer = _resolve_refusal(running, tamper=_flip_ticket_byte)
    assert _error_answer(answer) == [ErrNo.INVALID_TICKET]
    assert running.store._query("SELECT count(*) FROM resolutions")[0][0] == 0


def test_refuses_an_expired_ticket(running: RunningNode) -> None:
    answer = _resolve_refusal(running, advance=3600 + 120)
    assert _error_answer(answer) == [ErrNo.INVALID_TICKET]
    assert running.store._query("SELECT count(*) FROM resolutions")[0][0] == 0


def test_rotation_keeps_old_tickets_until_they_expire_then_destroys_the_version(
    running: RunningNode,
) -> None:
    ch, stub = running.exchanger()
    ex = exchange_via(stub)
    rotated = []
    now = running.clock.now
    ti = _transfer_init(
        ex, now, after_request=lambda: rotated.append(running.node.admin.rotate(OPERATOR))
    )
    # A ticket issued before the rotation still resolves; new tickets use the new version.
    full = full_call(ex, now)
    assert full.alice_keys == full.bob_keys
    running.clock.now += 10
    answer = _resolve(ex, ti, running.clock.now)
    assert decode(answer).header.data_type == DataType.RESOLVE_RESP
    # Once every ticket of the old version has expired, the sweep destroys it ...
    running.clock.now += 86400 + 120
    destroyed = running.node.sweep()
    new = rotated[0]
    assert new.version - 1 in destroyed and new.version not in destroyed
    states = {v.version: v.state for v in running.node.admin.key_versions()}
    assert states[new.version - 1] is KeyState.DESTROYED
    # ... and its tickets are refused.
    answer = _resolve(ex, ti, running.clock.now)
    ch.close()
    assert _error_answer(answer) == [ErrNo.INVALID_TICKET]


def test_hsm_loss_turns_health_not_serving_and_rpcs_unavailable(running: RunningNode) -> None:
    from grpc_status import rpc_status

    vault = running.node.vault
    _, data = _request(now=running.clock.now)
    with running.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        vault.device_removed("test: HSM unplugged")
        try:
            answer = health.Check(health_pb2.HealthCheckRequest(service=""))
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
            err = _rpc_error(kms_pb2_grpc.TicketServiceStub(ch), data)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            detail = rpc_status.from_call(err)
            assert detail is not None and b"HSM_UNAVAILABLE" in detail.details[0].value
        finally:
            vault.device_added()
        assert vault.available()
        answer = health.Check(health_pb2.HealthCheckRequest(service=""))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
