"""One KMS on several nodes (DESIGN.md "Scaling out"), through real `kmsnode serve` processes
that share a real PostgreSQL and one SoftHSM token: a ticket issued on one node resolves on
another and its keys are released on a third; replays and COUNTERs are caught across nodes;
an alarm raised on one node reaches a watcher on another; PostgreSQL going away makes every node
NOT_SERVING and coming back makes them serve again, without a restart."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.mikey.codec import Timestamp
from firmware.mikey.constants import TsType
from firmware.mikey.prf import PrfFunc
from tests.calls import ALICE, BOB, requested_policy, t_at, ues
from tests.cluster.conftest import DEADLINE, Cluster
from tests.core.world import Ues

pytestmark = pytest.mark.softhsm


def _stamp(unix: float) -> Any:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromSeconds(int(unix))
    return stamp


def _warrant(cluster: Cluster, member: Any, target: str, liid: str) -> None:
    now = time.time()
    cluster.admin(member).PutWarrant(
        kms_pb2.Warrant(liid=liid, target_identity=target, valid_from=_stamp(now - 60),
                        valid_until=_stamp(now + 3600), df2_identities=["df2.li.example.net"]),
        timeout=DEADLINE,
    )  # fmt: skip


def _reason(err: grpc.RpcError) -> str:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(err)
    assert status is not None, err
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return str(info.reason)


class Watcher:
    def __init__(self, channel: grpc.Channel) -> None:
        self.alarms: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.call = kms_pb2_grpc.AdminServiceStub(channel).WatchAlarms(
            kms_pb2.WatchAlarmsRequest(), timeout=120
        )
        self.call.initial_metadata()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for alarm in self.call:
                self.alarms.put(alarm)
        except grpc.RpcError:
            pass

    def until(
        self,
        correlation_id: str = "",
        reason: str = "",
        timeout: float = DEADLINE,
        detail: str = "",
    ) -> Any:
        """The first alarm with this correlation id (or reason, with `detail` in its detail);
        bounded."""
        while True:
            try:
                alarm = self.alarms.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no alarm {correlation_id or reason}") from None
            if (correlation_id and alarm.correlation_id == correlation_id) or (
                reason and alarm.reason == reason and detail in alarm.detail
            ):
                return alarm


def test_a_ticket_issued_on_one_node_resolves_on_another_and_is_released_on_a_third(
    cluster: Cluster,
) -> None:
    one, _, three = cluster.members
    exchanges = {m.name: cluster.exchange(m) for m in cluster.members}
    now = time.time()
    offer = Ues(exchanges["node-1"], lambda: now).offer(forking=True)
    answer = Ues(exchanges["node-2"], lambda: now).answer(offer, BOB)
    _warrant(cluster, one, BOB, "LIID-cluster-1")
    got = cluster.xk(three).GetKeys(
        kms_pb2.GetKeysRequest(target_identity=BOB, target_role=2, liid="LIID-cluster-1",
                               transfer_init=offer.transfer_init,
                               transfer_resp=answer.transfer_resp),
        timeout=DEADLINE,
    )  # fmt: skip
    assert [(s.cs_id, s.session_key, s.salt) for s in got.sessions] == [
        (k.cs_id, k.tek, k.salt) for k in answer.keys
    ]


def test_a_request_replayed_to_another_node_is_refused(cluster: Cluster) -> None:
    alice, _ = ues(PrfFunc.MIKEY_1)
    request = alice.request_init(
        csb_id=7, t=t_at(time.time()), rand_i=os.urandom(32),
        policy=requested_policy(PrfFunc.MIKEY_1, True, [BOB.encode()]),
    )  # fmt: skip
    cluster.exchange(cluster.members[0])(request)
    with pytest.raises(grpc.RpcError) as info:
        cluster.exchange(cluster.members[1])(request)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ("mikey-error", "1") in tuple(info.value.trailing_metadata() or ())


def test_a_counter_is_compared_across_nodes(cluster: Cluster) -> None:
    """RFC 3830 5.4: a COUNTER must strictly increase per sender, whichever node sees it."""
    alice, _ = ues(PrfFunc.MIKEY_1)

    def request(counter: int) -> bytes:
        return alice.request_init(
            csb_id=counter, t=Timestamp(TsType.COUNTER, counter.to_bytes(4, "big")),
            rand_i=os.urandom(32), policy=requested_policy(PrfFunc.MIKEY_1, True, [BOB.encode()]),
        )  # fmt: skip

    base = 1_000  # the cluster's database is new: no COUNTER of alice's yet
    cluster.exchange(cluster.members[0])(request(base + 10))
    with pytest.raises(grpc.RpcError) as info:
        cluster.exchange(cluster.members[2])(request(base + 10))
    assert ("mikey-error", "1") in tuple(info.value.trailing_metadata() or ())
    cluster.exchange(cluster.members[2])(request(base + 11))


def test_an_alarm_raised_on_one_node_reaches_a_watcher_on_another(cluster: Cluster) -> None:
    one, _, three = cluster.members
    watcher = Watcher(cluster.channel(one, "li", "df2"))  # the DF2 sees its own requests' alarms
    try:
        with pytest.raises(grpc.RpcError) as info:
            cluster.xk(three).GetKeys(
                kms_pb2.GetKeysRequest(target_identity=ALICE, target_role=1, liid="no-such",
                                       transfer_init=b"forged", correlation_id="across-1"),
                timeout=DEADLINE,
            )  # fmt: skip
        assert _reason(info.value) == "NO_ACTIVE_WARRANT"
        alarm = watcher.until(correlation_id="across-1")
        assert alarm.reason == "NO_ACTIVE_WARRANT"
    finally:
        watcher.call.cancel()


def _health(cluster: Cluster, member: Any) -> int:
    return int(
        health_pb2_grpc.HealthStub(cluster.channel(member))
        .Check(health_pb2.HealthCheckRequest(), timeout=DEADLINE)
        .status
    )


def test_postgresql_gone_makes_every_node_not_serving_and_back_serving_without_restart(
    cluster: Cluster,
) -> None:
    one = cluster.members[0]
    watcher = Watcher(cluster.channel(one, "li", "admin"))
    try:
        cluster.pg.stop()
        try:
            # node-1's own alarm (the other nodes' reach its watchers too, relayed)
            assert watcher.until(reason="STORE_UNAVAILABLE", timeout=30, detail=one.name)
            assert _health(cluster, one) == health_pb2.HealthCheckResponse.NOT_SERVING
            alice, _ = ues(PrfFunc.MIKEY_1)
            request = alice.request_init(
                csb_id=9, t=t_at(time.time()), rand_i=os.urandom(32),
                policy=requested_policy(PrfFunc.MIKEY_1, True, [BOB.encode()]),
            )  # fmt: skip
            with pytest.raises(grpc.RpcError) as info:
                cluster.exchange(one)(request)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            cluster.pg.start()
        assert watcher.until(reason="STORE_RESTORED", timeout=30, detail=one.name)
        assert _health(cluster, one) == health_pb2.HealthCheckResponse.SERVING
        now = time.time()
        offer = Ues(cluster.exchange(one), lambda: now).offer(forking=False)
        assert offer.transfer_init
    finally:
        watcher.call.cancel()


def test_a_node_killed_under_load_loses_no_acknowledged_release_and_every_chain_verifies(
    cluster: Cluster,
) -> None:
    """SIGKILL of node 3 while four DF2 clients fetch keys from it: every release it answered is
    in its audit chain in PostgreSQL, and every chain of every node verifies (kmsnode audit
    verify on another node)."""
    import subprocess
    import sys

    import psycopg

    from tests.cluster.conftest import _env

    one, _, three = cluster.members
    now = time.time()
    ues_ = Ues(cluster.exchange(one), lambda: now)
    offer = ues_.offer(forking=True)
    answer = ues_.answer(offer, BOB)
    _warrant(cluster, one, BOB, "LIID-kill")
    acknowledged: list[str] = []
    errors: list[grpc.RpcError] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        stub = cluster.xk(three)
        for i in range(10_000):
            if stop.is_set():
                return
            corr = f"kill-{n}-{i}"
            try:
                stub.GetKeys(
                    kms_pb2.GetKeysRequest(target_identity=BOB, target_role=2,
                                           liid="LIID-kill", transfer_init=offer.transfer_init,
                                           transfer_resp=answer.transfer_resp,
                                           correlation_id=corr),
                    timeout=DEADLINE,
                )  # fmt: skip
            except grpc.RpcError as err:
                errors.append(err)
                return  # the node is gone
            with lock:
                acknowledged.append(corr)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        while True:  # bounded by the clients' deadlines: kill once 40 releases were answered
            with lock:
                if len(acknowledged) >= 40:
                    break
            if not any(t.is_alive() for t in threads):
                raise AssertionError(f"the clients stopped before the kill: {errors[:1]}")
            threads[0].join(timeout=0.05)
        three.stop(signal.SIGKILL)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    with psycopg.connect(cluster.url) as conn:
        rows = conn.execute(
            "SELECT record FROM audit_records WHERE chain = %s", (three.name,)
        ).fetchall()
    recorded = " ".join(bytes(r[0]).decode() if isinstance(r[0], bytes | memoryview) else str(r[0])
                        for r in rows)  # fmt: skip
    missing = [corr for corr in acknowledged if f'"{corr}"' not in recorded]
    assert missing == [], f"{len(missing)} acknowledged releases are not in node-3's chain"
    out = subprocess.run(
        [sys.executable, "-m", "firmware.cli", "audit", "verify", "--config", str(one.config)],
        capture_output=True, text=True, env=_env(), timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert three.name in out.stdout
    three.start()  # the cluster goes on for the tests after this one
