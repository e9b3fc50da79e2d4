"""No client can starve a listener, and the LI listener speaks only TLS 1.3, through the real
servers (DESIGN.md "Listeners"): streams run beside the unary handlers and are capped per
listener and per certificate, connections are capped, and a TLS 1.2 client is refused on every
method kind. Unary calls are made with a deadline: "answered at once" means answered before it,
with every stream slot taken (no timing is asserted)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from hsm.softhsm import SoftHsmToken
from hsm.vault import VaultSettings
from tests.api import h2client
from tests.api.conftest import RunningNode, start_node
from tests.calls import full_call

pytestmark = pytest.mark.softhsm

DEADLINE = 10.0
LIMITS = "max_streams = 3\nmax_streams_per_client = 2\nmax_connections = 8"


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory,
    softhsm_token: SoftHsmToken,
    vault_settings: VaultSettings,
    _vault_keys: None,
) -> Iterator[RunningNode]:
    # two handler threads, as in production: the streams must not take them
    rn = start_node(
        tmp_path_factory.mktemp("limits"),
        softhsm_token,
        vault_settings,
        listener_extra=LIMITS,
        workers=2,
    )
    try:
        yield rn
    finally:
        rn.node.stop(1.0)


def _watch_health(channel: grpc.Channel) -> Any:
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
    next(call)  # the first status: the stream is open and holds its slot
    return call


def _watch_alarms(channel: grpc.Channel) -> Any:
    call = kms_pb2_grpc.AdminServiceStub(channel).WatchAlarms(
        kms_pb2.WatchAlarmsRequest(), timeout=4 * DEADLINE
    )
    call.initial_metadata()
    return call


def test_anonymous_health_watches_never_stop_ticket_exchanges(node: RunningNode) -> None:
    """Two anonymous Watch streams used to hold both handler threads of the UE listener."""
    channel = node.channel()
    calls = [_watch_health(channel), _watch_health(channel)]
    try:
        more = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=DEADLINE
        )
        with pytest.raises(grpc.RpcError) as info:
            next(more)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        stub = kms_pb2_grpc.TicketServiceStub(channel)
        call = full_call(
            lambda data: bytes(
                stub.Exchange(kms_pb2.MikeyMessage(data=data), timeout=DEADLINE).data
            ),
            node.clock.now,
        )
        assert call.alice_keys == call.bob_keys
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=DEADLINE
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for c in calls:
            c.cancel()


def test_streams_of_the_li_listener_are_capped_per_certificate_and_per_listener(
    node: RunningNode,
) -> None:
    admin, df2 = node.channel("li", "admin"), node.channel("li", "df2")
    calls = [_watch_alarms(admin), _watch_alarms(admin)]
    try:
        third = kms_pb2_grpc.AdminServiceStub(admin).WatchAlarms(
            kms_pb2.WatchAlarmsRequest(), timeout=DEADLINE
        )
        with pytest.raises(grpc.RpcError) as info:
            next(third)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # per certificate
        calls.append(_watch_health(df2))
        assert node.node.li.slots.open == 3
        fourth = health_pb2_grpc.HealthStub(df2).Watch(
            health_pb2.HealthCheckRequest(), timeout=DEADLINE
        )
        with pytest.raises(grpc.RpcError) as info:
            next(fourth)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # per listener
        # with every stream slot taken, unary calls are still answered
        listing = kms_pb2_grpc.AdminServiceStub(admin).ListWarrants(
            kms_pb2.ListWarrantsRequest(), timeout=DEADLINE
        )
        assert listing is not None
        verified = kms_pb2_grpc.AdminServiceStub(admin).VerifyAudit(
            kms_pb2.VerifyAuditRequest(), timeout=DEADLINE
        )
        assert verified.intact
    finally:
        for c in calls:
            c.cancel()


def test_a_closed_stream_gives_its_slot_back(node: RunningNode) -> None:
    admin = node.channel("li", "admin")
    first = [_watch_alarms(admin), _watch_alarms(admin)]
    for c in first:
        c.cancel()
    again = [_watch_alarms(admin), _watch_alarms(admin)]  # would be refused if slots leaked
    for c in again:
        c.cancel()


def test_connections_beyond_the_cap_are_refused_and_the_first_ones_still_served(
    node: RunningNode,
) -> None:
    ca = (node.pki / "ca.pem").read_bytes()
    opts = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.secure_channel(
            f"localhost:{node.node.ue_port}", grpc.ssl_channel_credentials(ca), options=opts
        )
        for _ in range(12)
    ]
    try:
        results = []
        for channel in channels:
            try:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                results.append("served")
            except grpc.RpcError as err:
                results.append(err.code().name)
        assert results.count("served") <= 8
        assert "UNAVAILABLE" in results
        assert results[0] == "served"
    finally:
        for channel in channels:
            channel.close()


# --- TLS 1.3 on the LI listener, every method kind ------------------------------------------

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]


@pytest.mark.parametrize(
    ("path", "request_bytes"),
    [
        ("/kms.v1.XkService/GetKeys", kms_pb2.GetKeysRequest(liid="L").SerializeToString()),
        ("/kms.v1.AdminService/ListWarrants", b""),
        ("/kms.v1.AdminService/WatchAlarms", b""),  # unary-stream
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", b"\x3a\x00"),  # stream
        ("/grpc.health.v1.Health/Check", b""),
        ("/grpc.health.v1.Health/Watch", b""),
    ],
)
def test_the_li_listener_refuses_a_tls12_client_on_every_method_kind(
    node: RunningNode, path: str, request_bytes: bytes
) -> None:
    pki: Path = node.pki
    kw = {"ca": pki / "ca.pem", "cert": pki / "admin.pem", "key": pki / "admin.key"}
    old = h2client.call(
        node.node.li_port, path, request_bytes, max_version=ssl.TLSVersion.TLSv1_2, **kw
    )
    assert old.tls_version == "TLSv1.2"
    assert old.status == UNAUTHENTICATED and "TLS 1.3" in old.message
    assert old.replies == []
    if path.endswith(("Watch", "WatchAlarms", "ServerReflectionInfo")):
        return  # a stream over TLS 1.3 would stay open: the unary ones show the client works
    new = h2client.call(node.node.li_port, path, request_bytes, **kw)
    assert new.tls_version == "TLSv1.3"
    assert new.status != UNAUTHENTICATED


def test_the_ue_listener_serves_a_tls12_client(node: RunningNode) -> None:
    """TLS 1.2 (AEAD suites only) stays allowed for UEs."""
    answer = h2client.call(
        node.node.ue_port,
        "/grpc.health.v1.Health/Check",
        b"",
        ca=node.pki / "ca.pem",
        max_version=ssl.TLSVersion.TLSv1_2,
    )
    assert answer.tls_version == "TLSv1.2" and answer.status == 0
