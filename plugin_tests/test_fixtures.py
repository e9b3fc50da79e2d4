"""Every fixture of the kmsnode pytest plugin through the real node it starts, used the way an
outside project uses it: only the fixtures and what `kmsnode_pytest` exports (no kmsnode inside,
no test helpers of the kmsnode repository).

Each test uses its own LIIDs and correlation ids, so the tests of the session's one node do not
see each other's warrants or alarms.
"""

from __future__ import annotations

import base64
import ipaddress
import uuid

import grpc
import pytest

from kmsnode_pytest import (
    AlarmWatcher,
    KmsNode,
    UserPair,
    WarrantFactory,
    error_reason,
    kms_pb2,
    kms_pb2_grpc,
)

INITIATOR = kms_pb2.TARGET_ROLE_INITIATOR
RESPONDER = kms_pb2.TARGET_ROLE_RESPONDER
_made_by_an_earlier_test: list[str] = []


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def get_keys(stub: kms_pb2_grpc.XkServiceStub, call, target: str, role: int, liid: str, corr=""):  # type: ignore[no-untyped-def]
    return stub.GetKeys(
        kms_pb2.GetKeysRequest(
            target_identity=target,
            target_role=role,
            transfer_init=call.transfer_init,
            transfer_resp=call.transfer_resp if role == RESPONDER else b"",
            liid=liid,
            correlation_id=corr or unique("corr"),
        ),
        timeout=30,
    )


def test_the_node_hands_out_loopback_listeners_a_ca_and_a_certificate_per_role(
    kms_node: KmsNode,
) -> None:
    hosts = {kms_node.ue_address.rpartition(":")[0], kms_node.li_address.rpartition(":")[0]}
    assert all(ipaddress.ip_address(h).is_loopback for h in hosts)
    assert kms_node.ue_address != kms_node.li_address
    assert kms_node.ca.is_file() and kms_node.config.is_file()
    for role in ("df2", "admin", "ue"):
        creds = kms_node.client(role)
        assert creds.cert.is_file() and creds.key.is_file()
        assert creds.identity.startswith("dns:")
    assert kms_node.kms_identity.startswith("sip:")
    assert kms_node.directory.is_dir()


def test_both_listeners_serve_over_tls_verified_with_the_handed_out_ca(kms_node: KmsNode) -> None:
    assert kms_node.health("ue")
    assert kms_node.health("li")


def test_the_admin_stub_administers_and_the_df2_certificate_does_not(
    kms_admin: kms_pb2_grpc.AdminServiceStub, kms_node: KmsNode
) -> None:
    versions = kms_admin.ListKeyVersions(kms_pb2.ListKeyVersionsRequest(), timeout=30).versions
    assert any(v.state == kms_pb2.KeyVersion.ACTIVE for v in versions)
    with pytest.raises(grpc.RpcError) as refused:
        kms_node.admin_service("df2").ListWarrants(kms_pb2.ListWarrantsRequest(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(refused.value) == "ROLE_NOT_ALLOWED"


def test_the_user_pair_calls_through_the_kms_and_both_sides_derive_the_same_keys(
    kms_user_pair: UserPair,
) -> None:
    alice, bob = kms_user_pair.initiator, kms_user_pair.responder
    assert alice.identity != bob.identity
    assert len(alice.psk) == len(bob.psk) == 32 and alice.psk != bob.psk
    call = kms_user_pair.call(sessions=2)
    assert [k.cs_id for k in call.initiator_keys] == [1, 2]
    assert call.initiator_keys == call.responder_keys
    assert call.initiator.identity == alice.identity and call.responder.identity == bob.identity


def test_the_sdp_bodies_carry_the_calls_mikey_messages(kms_user_pair: UserPair) -> None:
    call = kms_user_pair.call()
    offer = base64.b64encode(call.transfer_init).decode()
    answer = base64.b64encode(call.transfer_resp).decode()
    assert f"a=key-mgmt:mikey {offer}\r\n" in call.sdp_offer
    assert f"a=key-mgmt:mikey {answer}\r\n" in call.sdp_answer


def test_a_df2_gets_the_initiators_keys_under_a_warrant_on_the_initiator(
    kms_user_pair: UserPair, kms_warrant: WarrantFactory, kms_df2: kms_pb2_grpc.XkServiceStub
) -> None:
    call = kms_user_pair.call(sessions=2)
    warrant = kms_warrant(call.initiator.identity)
    keys = get_keys(kms_df2, call, call.initiator.identity, INITIATOR, warrant.liid)
    assert [(s.cs_id, s.session_key, s.salt) for s in keys.sessions] == call.initiator_keys


def test_a_warrant_names_the_target_and_the_node_refuses_another_one(
    kms_user_pair: UserPair,
    kms_warrant: WarrantFactory,
    kms_df2: kms_pb2_grpc.XkServiceStub,
    kms_alarms: AlarmWatcher,
) -> None:
    """A warrant on alice does not release bob's keys: refused, alarmed with the request's
    correlation id and LIID."""
    call = kms_user_pair.call()
    warrant = kms_warrant(call.initiator.identity)
    corr = unique("corr")
    with pytest.raises(grpc.RpcError) as refused:
        get_keys(kms_df2, call, call.responder.identity, RESPONDER, warrant.liid, corr)
    assert error_reason(refused.value) == "NO_ACTIVE_WARRANT"
    alarm = kms_alarms.wait_for(corr)
    assert alarm.reason == "NO_ACTIVE_WARRANT" and alarm.liid == warrant.liid


def test_a_warrant_outside_its_window_releases_nothing(
    kms_user_pair: UserPair,
    kms_warrant: WarrantFactory,
    kms_df2: kms_pb2_grpc.XkServiceStub,
    kms_alarms: AlarmWatcher,
) -> None:
    call = kms_user_pair.call()
    past = kms_warrant(call.responder.identity, valid_from=1_000_000_000, valid_until=1_000_003_600)
    corr = unique("corr")
    with pytest.raises(grpc.RpcError):
        get_keys(kms_df2, call, call.responder.identity, RESPONDER, past.liid, corr)
    assert kms_alarms.wait_for(corr).reason == "NO_ACTIVE_WARRANT"


def test_the_warrant_factory_stores_what_it_is_given(
    kms_warrant: WarrantFactory, kms_admin: kms_pb2_grpc.AdminServiceStub
) -> None:
    liid = unique("LIID")
    made = kms_warrant("sip:carol@ims.example.net", liid=liid, df2=["dns:other-df2.example.net"])
    assert made.liid == liid
    listed = kms_admin.ListWarrants(kms_pb2.ListWarrantsRequest(), timeout=30).warrants
    stored = [w for w in listed if w.liid == liid]
    assert len(stored) == 1
    assert list(stored[0].df2_identities) == ["dns:other-df2.example.net"]
    _made_by_an_earlier_test.append(liid)


def test_the_warrants_of_an_earlier_test_are_deleted_after_it(
    kms_admin: kms_pb2_grpc.AdminServiceStub,
) -> None:
    assert _made_by_an_earlier_test, "runs after test_the_warrant_factory_stores_what_it_is_given"
    listed = kms_admin.ListWarrants(kms_pb2.ListWarrantsRequest(), timeout=30).warrants
    assert not {w.liid for w in listed} & set(_made_by_an_earlier_test)


def test_a_df2_watcher_sees_the_alarms_of_its_own_requests(
    kms_node: KmsNode, kms_user_pair: UserPair, kms_df2: kms_pb2_grpc.XkServiceStub
) -> None:
    watcher = kms_node.watch_alarms("df2")
    try:
        call = kms_user_pair.call()
        corr = unique("corr")
        with pytest.raises(grpc.RpcError):
            get_keys(kms_df2, call, call.responder.identity, RESPONDER, unique("LIID"), corr)
        alarm = watcher.wait_for(corr)
        assert kms_node.client("df2").identity in alarm.caller.split(",")
    finally:
        watcher.close()


def test_waiting_for_an_alarm_that_never_comes_fails_in_bounded_time(
    kms_alarms: AlarmWatcher,
) -> None:
    with pytest.raises(AssertionError, match="no alarm for 'never-raised'"):
        kms_alarms.wait_for("never-raised", timeout=0.2)
