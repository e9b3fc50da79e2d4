"""The role matrix: UE, DF2 and ADMIN certificates of the node's CA, no certificate, and a DF2
certificate of another CA (same identities, other issuer), against every RPC on both listeners.

The role table (contract kms.proto, DESIGN.md "Listeners"):
  UE listener   TicketService, health; TLS with server authentication only (gRPC Python cannot
                ask for an optional client certificate, so none is requested or looked at)
  LI listener   TLS 1.3 with a client certificate of the LI CA, else no connection (UE
                certificates come from another CA: they cannot reach the LI listener at all);
                XkService.GetKeys: DF2; AdminService: ADMIN, WatchAlarms: ADMIN or DF2; health
  a service a listener does not serve: UNIMPLEMENTED
Every role refusal answers PERMISSION_DENIED / ROLE_NOT_ALLOWED with one alarm and one audit
record; a refused handshake reaches no servicer (no record, no alarm).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.devpki import make_dev_pki
from firmware.mikey.constants import DataType
from firmware.mikey.message import decode
from firmware.mikey.prf import PrfFunc
from tests.calls import BOB, requested_policy, t_at, ues
from tests.core.fakes import OPERATOR
from tests.xk.conftest import (
    ADMIN_NAME,
    ALICE,
    DEADLINE,
    DF2,
    DF2_NAME,
    INITIATOR,
    UE_NAME,
    AlarmWatcher,
    Xk,
    error_reason,
    unique,
)

pytestmark = pytest.mark.softhsm

CLIENTS = ["none", "ue", "df2", "admin", "other-ca"]
NAMES = {"ue": UE_NAME, "df2": DF2_NAME, "admin": ADMIN_NAME}


@dataclass(frozen=True)
class Rpc:
    stub: Callable[[grpc.Channel], Any]
    method: str
    request: Callable[[Xk], Any]
    listener: str  # the listener that serves it: "ue", "li" or "both"
    roles: frozenset[str]  # client certificates allowed; empty: any (role not checked)
    stream: bool = False


def _stamp(unix: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromSeconds(int(unix))
    return stamp


def _request_init(xk: Xk) -> Any:
    alice = ues(PrfFunc.MIKEY_1)[0]
    data = alice.request_init(
        csb_id=1,
        t=t_at(xk.rn.clock.now),
        rand_i=os.urandom(32),
        policy=requested_policy(PrfFunc.MIKEY_1, False, [BOB.encode()]),
    )
    return kms_pb2.MikeyMessage(data=data)


def _get_keys(xk: Xk) -> Any:
    call = xk.call(forking=False)
    return kms_pb2.GetKeysRequest(
        target_identity=ALICE,
        target_role=INITIATOR,
        transfer_init=call.transfer_init,
        liid=xk.warrant(ALICE),
        correlation_id=unique("roles"),
    )


def _delete_user(xk: Xk) -> Any:
    identity = f"sip:{unique('gone')}@ims.example.net"
    xk.node.admin.put_user(OPERATOR, identity, [], b"", b"")
    return kms_pb2.DeleteUserRequest(identity=identity)


def _put_warrant(xk: Xk) -> Any:
    now = xk.rn.clock.now
    return kms_pb2.Warrant(
        liid=unique("LIID"),
        target_identity=ALICE,
        valid_from=_stamp(now),
        valid_until=_stamp(now + 3600),
        df2_identities=[DF2],
    )


def _admin(method: str, request: Callable[[Xk], Any], stream: bool = False) -> Rpc:
    roles = {"admin", "df2"} if method == "WatchAlarms" else {"admin"}
    return Rpc(kms_pb2_grpc.AdminServiceStub, method, request, "li", frozenset(roles), stream)


RPCS: dict[str, Rpc] = {
    "Health.Check": Rpc(
        health_pb2_grpc.HealthStub, "Check", lambda xk: health_pb2.HealthCheckRequest(),
        "both", frozenset(),
    ),
    "TicketService.Exchange": Rpc(
        kms_pb2_grpc.TicketServiceStub, "Exchange", _request_init, "ue", frozenset()
    ),
    "XkService.GetKeys": Rpc(
        kms_pb2_grpc.XkServiceStub, "GetKeys", _get_keys, "li", frozenset({"df2"})
    ),
    "AdminService.PutUser": _admin(
        "PutUser",
        lambda xk: kms_pb2.PutUserRequest(identity=f"sip:{unique('new')}@ims.example.net"),
    ),
    "AdminService.DeleteUser": _admin("DeleteUser", _delete_user),
    "AdminService.PutWarrant": _admin("PutWarrant", _put_warrant),
    "AdminService.DeleteWarrant": _admin(
        "DeleteWarrant", lambda xk: kms_pb2.DeleteWarrantRequest(liid=xk.warrant(ALICE))
    ),
    "AdminService.ListWarrants": _admin("ListWarrants", lambda xk: kms_pb2.ListWarrantsRequest()),
    "AdminService.RotateTicketKey": _admin(
        "RotateTicketKey", lambda xk: kms_pb2.RotateTicketKeyRequest()
    ),
    "AdminService.ListKeyVersions": _admin(
        "ListKeyVersions", lambda xk: kms_pb2.ListKeyVersionsRequest()
    ),
    "AdminService.WatchAlarms": _admin(
        "WatchAlarms", lambda xk: kms_pb2.WatchAlarmsRequest(), stream=True
    ),
    "AdminService.VerifyAudit": _admin("VerifyAudit", lambda xk: kms_pb2.VerifyAuditRequest()),
}  # fmt: skip


def expected(listener: str, client: str, rpc: Rpc) -> str:
    """What the role table says: OK, UNAVAILABLE (no TLS session), UNIMPLEMENTED or the reason."""
    if listener == "li" and client in ("none", "other-ca", "ue"):
        return "UNAVAILABLE"  # the LI listener's handshake needs a certificate of the LI CA
    if rpc.listener not in (listener, "both"):
        return "UNIMPLEMENTED"
    if listener == "ue" or not rpc.roles or client in rpc.roles:
        return "OK"
    return "ROLE_NOT_ALLOWED"


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second dev PKI: the same identities (df2.li.example.net ...) under another CA."""
    directory = tmp_path_factory.mktemp("other-ca")
    make_dev_pki(directory)
    return directory


@pytest.fixture
def channel_for(xk: Xk, other_ca: Path) -> Iterator[Callable[[str, str], grpc.Channel]]:
    opened: list[grpc.Channel] = []

    def make(listener: str, client: str) -> grpc.Channel:
        if client != "other-ca":
            return xk.channel(listener, None if client == "none" else client)
        port = xk.node.ue_port if listener == "ue" else xk.node.li_port
        creds = grpc.ssl_channel_credentials(
            (xk.rn.pki / "ca.pem").read_bytes(),  # the client trusts the node ...
            (other_ca / "df2.key").read_bytes(),  # ... but shows a certificate of another CA
            (other_ca / "df2.pem").read_bytes(),
        )
        opened.append(grpc.secure_channel(f"localhost:{port}", creds))
        return opened[-1]

    yield make
    for ch in opened:
        ch.close()


def sentinel(xk: Xk) -> str:
    """Raise a NO_ACTIVE_WARRANT alarm; returns its correlation id."""
    corr = unique("sentinel")
    with pytest.raises(grpc.RpcError):
        xk.get_keys(b"", ALICE, INITIATOR, unique("no-such-liid"), correlation_id=corr)
    return corr


def _outcome(xk: Xk, channel: grpc.Channel, rpc: Rpc, request: Any) -> tuple[str, Any]:
    method = getattr(rpc.stub(channel), rpc.method)
    try:
        if not rpc.stream:
            return "OK", method(request, timeout=DEADLINE)
        call = method(request, timeout=DEADLINE)
        try:
            call.initial_metadata()  # subscribed, or the RPC has ended
            probe = sentinel(xk)  # a subscribed watcher gets this alarm next
            alarm = next(call)
            assert alarm.correlation_id == probe
            return "OK", alarm
        finally:
            call.cancel()
    except grpc.RpcError as err:
        code = err.code()
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return error_reason(err), err
        return code.name, err


@pytest.mark.parametrize("rpc_name", list(RPCS))
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("listener", ["ue", "li"])
def test_each_certificate_gets_what_the_role_table_says_on_each_listener(
    xk: Xk,
    watcher: AlarmWatcher,
    channel_for: Callable[[str, str], grpc.Channel],
    listener: str,
    client: str,
    rpc_name: str,
) -> None:
    rpc = RPCS[rpc_name]
    want = expected(listener, client, rpc)
    request = rpc.request(xk)
    records = xk.node.audit.count
    got, answer = _outcome(xk, channel_for(listener, client), rpc, request)
    assert got == want, (listener, client, rpc_name, answer)
    new = xk.audit_records()[records:]
    if rpc.stream:  # the probe alarm's audit record
        assert new[-1]["fields"]["correlation_id"].startswith("sentinel")
        new = new[:-1]
    alarms = []
    last = sentinel(xk)
    while (alarm := watcher.next()).correlation_id != last:
        alarms.append((alarm.reason, alarm.caller))
    probe = [("NO_ACTIVE_WARRANT", DF2_NAME)] if rpc.stream else []
    if want == "ROLE_NOT_ALLOWED":  # one alarm, one record
        assert alarms == [("ROLE_NOT_ALLOWED", NAMES[client]), *probe]
        (record,) = new
        assert ",".join(record["fields"]["caller"]) == NAMES[client]
        assert record["event"] in ("ROLE_REFUSED", "KEY_REFUSED")
    else:
        assert alarms == probe
    if want == "OK":
        _check_answer(rpc_name, answer, new, records)
    elif want != "ROLE_NOT_ALLOWED":  # no TLS session or no such service: no servicer ran
        assert new == []


def _check_answer(rpc_name: str, answer: Any, new: list[dict[str, Any]], records: int) -> None:
    """An allowed RPC did its work (and audited what changes state)."""
    if rpc_name == "Health.Check":
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    elif rpc_name == "TicketService.Exchange":
        assert decode(answer.data).header.data_type == DataType.REQUEST_RESP
    elif rpc_name == "XkService.GetKeys":
        assert len(answer.sessions) == 1 and [r["event"] for r in new] == ["KEY_RELEASE"]
    elif rpc_name == "AdminService.PutUser":
        assert len(answer.psk) == 32 and [r["event"] for r in new] == ["ADMIN_PUT_USER"]
    elif rpc_name == "AdminService.VerifyAudit":
        assert answer.intact and answer.records == records
    elif rpc_name in ("AdminService.ListWarrants", "AdminService.ListKeyVersions"):
        assert answer.ListFields() and new == []
    elif rpc_name == "AdminService.WatchAlarms":
        assert new == []
    else:
        event = "ADMIN_" + "".join(
            "_" + c if c.isupper() else c.upper() for c in rpc_name.split(".")[1]
        ).lstrip("_")
        assert [r["event"] for r in new] == [event]
