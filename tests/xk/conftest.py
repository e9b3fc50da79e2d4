"""Fixtures of the Xk tests: a real node (SoftHSM token, real mutual TLS on loopback, Prometheus on
a loopback port), calls made through its UE listener, GetKeys and AdminService through its LI
listener with the dev PKI's DF2 / ADMIN / UE certificates, and an alarm watcher.

Rules:
- `xk` is one node per test module (start-up costs a SoftHSM login and two TLS servers); tests
  that move the node's clock put it back, and each test uses its own LIIDs and correlation ids,
  so tests of a module do not see each other's warrants or alarms.
- Waits are bounded (gRPC deadlines, queue timeouts); nothing sleeps.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.mikey.codec import GenericIdEntry
from firmware.mikey.prf import PrfFunc
from firmware.node import Node
from hsm.softhsm import SoftHsmToken
from hsm.vault import VaultSettings
from tests.api.conftest import RunningNode, exchange_via, start_node
from tests.calls import (
    ALICE,
    BOB,
    Call,
    full_call,
    requested_policy,
    t_at,
    ues,
)
from tests.core.fakes import OPERATOR

DF2 = "df2.li.example.net"
ADMIN = "admin.li.example.net"
# Alarm.caller of the dev certificates: every SAN, typed, comma-separated (audit records hold
# the same identities as a list)
DF2_NAME = f"dns:{DF2},uri:urn:kmsnode:df2:{DF2}"
ADMIN_NAME = f"dns:{ADMIN},uri:urn:kmsnode:admin:{ADMIN}"
UE_NAME = "dns:ue.ims.example.net,uri:urn:kmsnode:ue:ue.ims.example.net"
CAROL = "sip:carol@ims.example.net"
CAROL_PSK = bytes(range(64, 96))
DEADLINE = 30.0

INITIATOR = kms_pb2.TARGET_ROLE_INITIATOR
RESPONDER = kms_pb2.TARGET_ROLE_RESPONDER

__all__ = ["ALICE", "BOB"]  # re-exported for the test modules of this directory

_ids = itertools.count(1)


def unique(prefix: str) -> str:
    """A LIID / correlation id no other test of the session uses."""
    return f"{prefix}-{next(_ids)}"


def error_reason(err: grpc.RpcError) -> str:
    """The ErrorInfo reason of a refused RPC (domain kms.v1)."""
    status = rpc_status.from_call(err)
    assert status is not None, f"no rich status in {err.code()}: {err.details()}"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "kms.v1"
    return str(info.reason)


def start_xk_node(
    directory: Path,
    token: SoftHsmToken,
    settings: VaultSettings,
    forking: bool = False,
    **kw: Any,
) -> RunningNode:
    """Like tests.api.conftest.start_node, plus [metrics] on an ephemeral loopback port and
    carol as a third user. `forking=False` grants key forking only when the ticket asks for it."""
    extra = '\n[metrics]\naddress = "127.0.0.1:0"\n' + kw.pop("extra_config", "")
    return start_node(
        directory,
        token,
        settings,
        forking=forking,
        extra_config=extra,
        extra_users=((CAROL, CAROL_PSK),),
        **kw,
    )


class AlarmWatcher:
    """AdminService.WatchAlarms in a thread; `next()` is the next alarm (bounded wait)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.alarms: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.call = kms_pb2_grpc.AdminServiceStub(channel).WatchAlarms(
            kms_pb2.WatchAlarmsRequest(), timeout=300
        )
        self.call.initial_metadata()  # sent once the server has subscribed us
        self._thread = threading.Thread(target=self._read, name="alarm-watcher", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for alarm in self.call:
                self.alarms.put(alarm)
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    def next(self, timeout: float = DEADLINE) -> Any:
        try:
            return self.alarms.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no alarm within {timeout} s") from None

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(timeout=DEADLINE)


@dataclass
class Xk:
    """A running node and clients for it."""

    rn: RunningNode
    _channels: dict[tuple[str, str | None], grpc.Channel] = field(default_factory=dict)

    @property
    def node(self) -> Node:
        return self.rn.node

    def channel(self, listener: str, client: str | None) -> grpc.Channel:
        key = (listener, client)
        if key not in self._channels:
            self._channels[key] = self.rn.channel(listener, client)
        return self._channels[key]

    def xk(self, client: str | None = "df2") -> kms_pb2_grpc.XkServiceStub:
        return kms_pb2_grpc.XkServiceStub(self.channel("li", client))

    def admin(self, client: str | None = "admin") -> kms_pb2_grpc.AdminServiceStub:
        return kms_pb2_grpc.AdminServiceStub(self.channel("li", client))

    def call(
        self, prf: PrfFunc = PrfFunc.MIKEY_1, forking: bool = True, sessions: int = 1, **kw: Any
    ) -> Call:
        """A whole call alice -> bob through the UE listener at the node's clock."""
        stub = kms_pb2_grpc.TicketServiceStub(self.channel("ue", None))
        return full_call(exchange_via(stub), self.rn.clock.now, prf, forking, sessions, **kw)

    def offer(self, forking: bool = True, responders: tuple[str, ...] = (BOB,)) -> bytes:
        """Alice's TRANSFER_INIT of a call nobody has answered (no resolution at the KMS)."""
        alice, _ = ues(PrfFunc.MIKEY_1)
        now = self.rn.clock.now
        exchange = exchange_via(kms_pb2_grpc.TicketServiceStub(self.channel("ue", None)))
        policy = requested_policy(PrfFunc.MIKEY_1, forking, [r.encode() for r in responders])
        alice.process_request_resp(
            exchange(
                alice.request_init(
                    csb_id=int.from_bytes(os.urandom(4), "big"),
                    t=t_at(now),
                    rand_i=os.urandom(32),
                    policy=policy,
                )
            )
        )
        return alice.transfer_init(
            csb_id=int.from_bytes(os.urandom(4), "big"),
            t=t_at(now),
            rand_i=os.urandom(32),
            sessions=[GenericIdEntry.srtp(1, 0x1000)],
            responder=responders[0].encode(),
        )

    def warrant(
        self,
        target: str,
        df2: tuple[str, ...] = (DF2,),
        valid_from: float | None = None,
        valid_until: float | None = None,
    ) -> str:
        """An active warrant for `target` (through the node's admin core); returns its LIID."""
        liid = unique("LIID")
        now = self.rn.clock.now
        self.node.admin.put_warrant(
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
        role: int,
        liid: str,
        transfer_resp: bytes = b"",
        correlation_id: str | None = None,
        client: str | None = "df2",
    ) -> Any:
        return self.xk(client).GetKeys(
            kms_pb2.GetKeysRequest(
                target_identity=target,
                target_role=role,
                transfer_init=transfer_init,
                transfer_resp=transfer_resp,
                liid=liid,
                correlation_id=correlation_id if correlation_id is not None else unique("corr"),
            ),
            timeout=DEADLINE,
        )

    def audit_records(self) -> list[dict[str, Any]]:
        """Every record of the node's audit log (JSON lines)."""
        return [json.loads(line) for line in self.rn.cfg.audit_log.read_bytes().splitlines()]

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()


@pytest.fixture(scope="module")
def xk(
    tmp_path_factory: pytest.TempPathFactory,
    softhsm_token: SoftHsmToken,
    vault_settings: VaultSettings,
    _vault_keys: None,
) -> Iterator[Xk]:
    rn = start_xk_node(tmp_path_factory.mktemp("xk"), softhsm_token, vault_settings)
    client = Xk(rn)
    try:
        yield client
    finally:
        client.close()
        rn.node.stop(1.0)


@pytest.fixture
def watcher(xk: Xk) -> Iterator[AlarmWatcher]:
    w = AlarmWatcher(xk.channel("li", "admin"))
    try:
        yield w
    finally:
        w.close()
