"""X1 (ETSI TS 103 221-1) through the real node: every message type, tasks as warrants that
GetKeys honours, the error responses, hostile XML, certificates and roles, response shapes."""

from __future__ import annotations

import os
import threading
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import grpc
import pytest

from firmware.api.proto.kms.v1 import kms_pb2
from tests.x1.conftest import ADMF, DATA, NE, NS, XSI, X1Client, X1World, new_id, request
from tests.xk.conftest import BOB, CAROL, RESPONDER, AlarmWatcher, error_reason

pytestmark = pytest.mark.softhsm


def _records(world: X1World, event: str) -> list[dict[str, object]]:
    """The fields of every audit record of `event`."""
    return [r["fields"] for r in world.xk.audit_records() if r.get("event") == event]


# --- keep-alive, ping ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ping", "keepalive"])
def test_ping_and_keepalive_are_acknowledged(x1world: X1World, name: str) -> None:
    answer = x1world.admf.send(name)
    kind = "PingResponse" if name == "ping" else "KeepaliveResponse"
    assert answer.kinds() == [kind]
    assert answer.headers["content-type"] == "application/xml"
    ok = answer.find("oK")
    assert ok is not None and ok.text == "AcknowledgedAndCompleted"
    assert answer.find("neIdentifier").text == NE  # type: ignore[union-attr]


def test_the_ping_response_has_the_shape_of_the_public_sample(x1world: X1World) -> None:
    ours = x1world.admf.send("ping").root
    sample = ET.parse(DATA / "ping_response.xml").getroot()
    assert _shape(ours) == _shape(sample)


def _shape(element: ET.Element) -> list[tuple[str, str | None]]:
    return [(e.tag, e.get(f"{{{XSI}}}type", "").split(":")[-1] or None) for e in element.iter()]


# --- tasks are warrants -------------------------------------------------------------------------


def test_a_task_activated_over_x1_enables_get_keys_and_its_deactivation_refuses_them(
    x1world: X1World, watcher: AlarmWatcher
) -> None:
    xk = x1world.xk
    did = x1world.destination()
    xid, liid = x1world.activate(BOB, did)
    call = xk.call()
    keys = xk.get_keys(call.transfer_init, BOB, RESPONDER, liid, call.transfer_resp)
    assert keys.sessions[0].session_key == call.bob_keys[0].tek
    assert x1world.admf.send("deactivate_task", xid=xid).kinds() == ["DeactivateTaskResponse"]
    with pytest.raises(grpc.RpcError) as info:
        xk.get_keys(call.transfer_init, BOB, RESPONDER, liid, call.transfer_resp)
    assert error_reason(info.value) == "NO_ACTIVE_WARRANT"
    alarm = watcher.next()
    assert (alarm.reason, alarm.liid) == ("NO_ACTIVE_WARRANT", liid)


def test_admin_service_lists_an_x1_task_as_a_warrant_and_the_audit_names_the_admf(
    x1world: X1World,
) -> None:
    did = x1world.destination()
    xid, liid = x1world.activate(CAROL, did)
    listing = x1world.xk.admin().ListWarrants(kms_pb2.ListWarrantsRequest(), timeout=30)
    found = [w for w in listing.warrants if w.liid == liid]
    assert [(w.target_identity, list(w.df2_identities)) for w in found] == [
        (CAROL, ["dns:df2.li.example.net"])
    ]
    records = [r for r in _records(x1world, "X1_ACTIVATE_TASK") if r.get("xid") == xid]
    assert records and f"dns:{ADMF}" in records[0]["caller"]  # type: ignore[operator]


def test_get_task_details_and_list_all_details_echo_what_was_provisioned(
    x1world: X1World,
) -> None:
    did = x1world.destination()
    xid, liid = x1world.activate("tel:+15550123", did)
    details = x1world.admf.send("get_task_details", xid=xid)
    assert details.kinds() == ["GetTaskDetailsResponse"]
    task = details.find("taskResponseDetails/taskDetails")
    assert task is not None
    assert task.findtext(f"{{{NS}}}xId") == xid
    target = f"{{{NS}}}targetIdentifiers/{{{NS}}}targetIdentifier/{{{NS}}}telUri"
    assert task.findtext(target) == "tel:+15550123"
    assert task.findtext(f"{{{NS}}}listOfDIDs/{{{NS}}}dId") == did
    liid_path = f"{{{NS}}}listOfMediationDetails/{{{NS}}}mediationDetails/{{{NS}}}LIID"
    assert task.findtext(liid_path) == liid
    status = details.find("taskResponseDetails/taskStatus/provisioningStatus")
    assert status is not None and status.text == "complete"
    listing = x1world.admf.send("list_all_details")
    xids = listing.find("ListOfXIDs")
    dids = listing.find("ListOfDIDs")
    assert xids is not None and dids is not None
    assert xid in [e.text for e in xids] and did in [e.text for e in dids]


def test_modify_task_replaces_the_target_and_window_and_keeps_the_liid(x1world: X1World) -> None:
    xk = x1world.xk
    did = x1world.destination()
    xid, liid = x1world.activate(CAROL, did)
    now = xk.rn.clock.now
    from tests.x1.conftest import x1_time

    modified = x1world.admf.send(
        "modify_task",
        xid=xid,
        did=did,
        target=BOB,
        target_kind="sipUri",
        liid=liid,
        start=x1_time(now - 30),
        end=x1_time(now + 60),
    )
    assert modified.kinds() == ["ModifyTaskResponse"]
    [warrant] = [w for w in xk.node.admin.list_warrants() if w.liid == liid]
    assert (warrant.target, warrant.valid_until) == (BOB, pytest.approx(now + 60, abs=1e-3))
    other_liid = x1world.admf.send(
        "modify_task",
        xid=xid,
        did=did,
        target=BOB,
        target_kind="sipUri",
        liid="ANOTHER-LIID",
        start=x1_time(now - 30),
        end=x1_time(now + 60),
    )
    assert other_liid.codes() == [3001]


def test_modify_or_deactivate_of_an_unknown_xid_gets_2020(x1world: X1World) -> None:
    did = x1world.destination()
    now = x1world.xk.rn.clock.now
    from tests.x1.conftest import x1_time

    modify = x1world.admf.send(
        "modify_task",
        xid=new_id(),
        did=did,
        target=BOB,
        target_kind="sipUri",
        liid="X1-NONE",
        start=x1_time(now),
        end=x1_time(now + 60),
    )
    assert modify.codes() == [2020]
    assert x1world.admf.send("deactivate_task", xid=new_id()).codes() == [2020]
    assert x1world.admf.send("get_task_details", xid=new_id()).codes() == [2020]


def test_activating_an_existing_xid_gets_2010_and_an_unknown_did_2040(x1world: X1World) -> None:
    did = x1world.destination()
    xid, _ = x1world.activate(BOB, did)
    again = x1world.admf.post(
        request(
            "activate_task",
            xid=xid,
            did=did,
            target=BOB,
            target_kind="sipUri",
            liid="X1-OTHER",
            start="2026-01-01T00:00:00.000000Z",
            end="2027-01-01T00:00:00.000000Z",
        )
    )
    assert again.codes() == [2010]
    unknown = x1world.admf.post(
        request(
            "activate_task",
            xid=new_id(),
            did=new_id(),
            target=BOB,
            target_kind="sipUri",
            liid="X1-UNKNOWN-DID",
            start="2026-01-01T00:00:00.000000Z",
            end="2027-01-01T00:00:00.000000Z",
        )
    )
    assert unknown.codes() == [2040]


def test_an_unsupported_target_identifier_gets_3010(x1world: X1World) -> None:
    did = x1world.destination()
    answer = x1world.admf.post(
        request(
            "activate_task",
            xid=new_id(),
            did=did,
            target="001010123456789",
            target_kind="imsi",
            liid="X1-IMSI",
            start="2026-01-01T00:00:00.000000Z",
            end="2027-01-01T00:00:00.000000Z",
        )
    )
    assert answer.codes() == [3010]


def test_deactivate_all_tasks_ends_every_task_but_no_admin_service_warrant(
    x1world: X1World,
) -> None:
    xk = x1world.xk
    did = x1world.destination()
    x1world.activate(BOB, did)
    x1world.activate(CAROL, did)
    admin_liid = xk.warrant(BOB)
    assert x1world.admf.send("deactivate_all_tasks").kinds() == ["DeactivateAllTasksResponse"]
    left = xk.node.admin.list_warrants()
    assert [w.xid for w in left] == [""] * len(left)
    assert admin_liid in [w.liid for w in left]


# --- destinations ------------------------------------------------------------------------------


def test_destination_lifecycle_and_its_errors(x1world: X1World) -> None:
    admf, xk = x1world.admf, x1world.xk
    did = x1world.destination()
    duplicate = admf.send("create_destination", did=did, friendly="DF2", address="dns:x")
    assert duplicate.codes() == [2030]
    details = admf.send("get_destination_details", did=did)
    assert details.kinds() == ["GetDestinationDetailsResponse"]
    uri = details.find("destinationResponseDetails/destinationDetails/deliveryAddress/uri")
    assert uri is not None and uri.text == "dns:df2.li.example.net"
    xid, liid = x1world.activate(BOB, did)
    assert admf.send("remove_destination", did=did).codes() == [7010]
    # moving the destination to another DF2 moves the task's keys with it
    moved = admf.send(
        "modify_destination", did=did, friendly="DF2 b", address="dns:df2-b.li.example.net"
    )
    assert moved.kinds() == ["ModifyDestinationResponse"]
    call = xk.call()
    with pytest.raises(grpc.RpcError) as info:
        xk.get_keys(call.transfer_init, BOB, RESPONDER, liid, call.transfer_resp)
    assert error_reason(info.value) == "NO_ACTIVE_WARRANT"
    keys = xk.get_keys(call.transfer_init, BOB, RESPONDER, liid, call.transfer_resp, client="df2-b")
    assert keys.sessions[0].session_key == call.bob_keys[0].tek
    admf.send("deactivate_task", xid=xid)
    assert admf.send("remove_destination", did=did).kinds() == ["RemoveDestinationResponse"]
    assert admf.send("get_destination_details", did=did).codes() == [2040]
    assert admf.send("remove_destination", did=did).codes() == [2040]


def test_a_destination_that_is_not_a_uri_gets_6020(x1world: X1World) -> None:
    body = request("create_destination", did=new_id(), friendly="ip", address="x").replace(
        b"<ns1:uri>x</ns1:uri>", b"<ns1:e164Number>4930123</ns1:e164Number>"
    )
    assert x1world.admf.post(body).codes() == [6020]


# --- containers and headers ----------------------------------------------------------------------


def test_a_container_of_two_messages_is_answered_in_order(x1world: X1World) -> None:
    answer = x1world.admf.send("multi", xid=new_id(), tid2=str(uuid.uuid4()))
    assert answer.kinds() == ["PingResponse", "ErrorResponse"]
    assert answer.codes() == [None, 2020]


@pytest.mark.parametrize(
    ("values", "code"),
    [
        ({"ne": "another-ne"}, 1060),
        ({"admf": "admf-3.li.example.net"}, 1040),
        ({"admf": "admf-2.li.example.net"}, 1030),  # listed, but not this certificate's UID
        ({"tid": "3741800E-971B-4AA9-85F4-466D2B1ADC7F"}, 1010),
        ({"ts": "2026-01-01T00:00:00Z"}, 1010),
    ],
)
def test_header_errors_get_their_codes(x1world: X1World, values: dict[str, str], code: int) -> None:
    assert x1world.admf.post(request("ping", **values)).codes() == [code]


def test_an_unsupported_version_gets_1020_and_the_error_has_the_public_shape(
    x1world: X1World,
) -> None:
    answer = x1world.admf.post(request("ping").replace(b"v1.6.1", b"v2.0.0"))
    assert answer.codes() == [1020]
    sample = ET.parse(DATA / "error_response.xml").getroot()
    assert _shape(answer.root) == _shape(sample)


def test_a_second_admf_certificate_binds_its_own_uid(x1world: X1World) -> None:
    other = X1Client(x1world.xk, "admf-2")
    try:
        answer = other.post(request("ping", admf="admf-2.li.example.net"))
        assert answer.kinds() == ["PingResponse"]
    finally:
        other.close()


def test_a_message_type_we_do_not_serve_gets_1080(x1world: X1World) -> None:
    body = request("ping").replace(b"ns1:PingRequest", b"ns1:GetNEStatusRequest")
    answer = x1world.admf.post(body)
    assert answer.codes() == [1080]


def test_every_error_response_is_a_refusal_with_alarm_and_audit_record(
    x1world: X1World, watcher: AlarmWatcher
) -> None:
    xid = new_id()
    assert x1world.admf.send("deactivate_task", xid=xid).codes() == [2020]
    alarm = watcher.next()
    assert alarm.reason == "TASK_REFUSED" and f"dns:{ADMF}" in alarm.caller
    records = [
        r for r in _records(x1world, "REQUEST_REFUSED") if r["method"] == "X1.DeactivateTask"
    ]
    assert records and records[-1]["reason"] == "TASK_REFUSED"


# --- hostile XML -------------------------------------------------------------------------------


def _top_level_error(answer: object) -> ET.Element:
    from tests.x1.conftest import X1Answer

    assert isinstance(answer, X1Answer) and answer.status == 200
    root = answer.root
    assert root.tag == f"{{{NS}}}X1TopLevelErrorResponse"
    return root


@pytest.mark.parametrize(
    "body",
    [
        b"<not xml",
        b"<X1Request xmlns='urn:other'/>",
        b'<X1Request xmlns="http://uri.etsi.org/03221/X1/2017/10"/>',
        b'<X1Request xmlns="http://uri.etsi.org/03221/X1/2017/10"><x1RequestMessage/></X1Request>',
        "\u00e9".encode("latin-1"),
    ],
)
def test_what_does_not_parse_gets_a_top_level_error_response(x1world: X1World, body: bytes) -> None:
    root = _top_level_error(x1world.admf.post(body))
    assert root.findtext(f"{{{NS}}}admfIdentifier") == ADMF  # from the certificate's UID
    assert root.findtext(f"{{{NS}}}neIdentifier") == NE
    sample = ET.parse(DATA / "top_level_error_response.xml").getroot()
    assert [e.tag for e in root.iter()] == [e.tag for e in sample.iter()]


def test_an_external_entity_is_refused_and_nothing_is_read(
    x1world: X1World, watcher: AlarmWatcher
) -> None:
    answer = x1world.admf.post(request("xxe"))
    _top_level_error(answer)
    hostname = open("/etc/hostname", "rb").read().strip()  # noqa: SIM115
    assert hostname not in answer.body
    alarm = watcher.next()
    assert alarm.reason == "INVALID_REQUEST" and "DOCTYPE" in alarm.detail


class Probe:
    """A FIFO that tells whether anyone opened it: a writer thread blocks in open() until a
    reader does, and marks it before closing (the reader then reads an empty file)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path, self.opened = path, threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    def _write(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        self.opened.set()
        os.close(fd)

    def release(self) -> None:
        """Open it ourselves so the writer ends (a reader that is us marks it too)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self._thread.join(timeout=30)
        os.close(fd)


@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE X1Request SYSTEM "file://{probe}">',
        '<!DOCTYPE X1Request [<!ENTITY % p SYSTEM "file://{probe}"> %p;]>',
    ],
    ids=["external-subset", "parameter-entity"],
)
def test_an_external_dtd_or_parameter_entity_is_never_opened(
    x1world: X1World, tmp_path: Path, doctype: str
) -> None:
    # libxml2 reads these even with load_dtd and resolve_entities off: a resolver refuses them.
    probe = Probe(tmp_path / "probe.dtd")
    body = request("ping").replace(
        b"<ns1:X1Request", doctype.format(probe=probe.path).encode() + b"\n<ns1:X1Request", 1
    )
    try:
        _top_level_error(x1world.admf.post(body))
        assert not probe.opened.is_set(), "the node opened a file the request named"
    finally:
        probe.release()


def test_a_doctype_is_refused_even_when_it_declares_nothing_used(x1world: X1World) -> None:
    body = request("ping").replace(
        b"<ns1:X1Request", b'<!DOCTYPE X1Request [<!ENTITY a "b">]>\n<ns1:X1Request', 1
    )
    _top_level_error(x1world.admf.post(body))


def test_billion_laughs_are_refused(x1world: X1World) -> None:
    answer = x1world.admf.post(request("billion_laughs"))
    _top_level_error(answer)
    assert b"lollol" not in answer.body


def test_xml_nested_deeper_than_the_cap_is_refused(x1world: X1World) -> None:
    deep = b"<a>" * 20 + b"</a>" * 20  # max_depth = 16 in this module's node
    body = request("ping").replace(b"</ns1:x1RequestMessage>", deep + b"</ns1:x1RequestMessage>")
    _top_level_error(x1world.admf.post(body))


def test_a_container_over_max_messages_is_refused_whole(x1world: X1World) -> None:
    # max_messages = 4 in this module's node: four pings are answered, five are not read.
    def pings(n: int) -> bytes:
        body = request("ping")
        start = body.index(b"<ns1:x1RequestMessage")
        end = body.index(b"</ns1:x1RequestMessage>") + len(b"</ns1:x1RequestMessage>")
        return body[:start] + body[start:end] * n + body[end:]

    assert x1world.admf.post(pings(4)).kinds() == ["PingResponse"] * 4
    _top_level_error(x1world.admf.post(pings(5)))


# --- HTTP and TLS ------------------------------------------------------------------------------


def test_a_certificate_without_the_x1_role_gets_403_with_a_role_refusal(
    x1world: X1World, watcher: AlarmWatcher
) -> None:
    df2 = X1Client(x1world.xk, "df2")
    try:
        answer = df2.post(request("ping"))
    finally:
        df2.close()
    assert (answer.status, answer.body) == (403, b"")
    alarm = watcher.next()
    assert alarm.reason == "ROLE_NOT_ALLOWED" and "df2.li.example.net" in alarm.caller
    assert _records(x1world, "ROLE_REFUSED")[-1]["method"] == "X1"


def test_an_admin_certificate_cannot_provision_tasks_either(x1world: X1World) -> None:
    admin = X1Client(x1world.xk, "admin")
    try:
        assert admin.post(request("ping")).status == 403
    finally:
        admin.close()


def test_other_methods_and_paths_get_405_and_404(x1world: X1World) -> None:
    assert x1world.admf.post(b"", method="GET").status == 405
    assert x1world.admf.post(request("ping"), path="/X1/ADMF").status == 404


def test_the_listener_requires_tls13_and_a_client_certificate(x1world: X1World) -> None:
    import socket
    import ssl

    admf = x1world.admf
    tls12 = admf.context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", admf.port)) as raw:
        tls12.wrap_socket(raw, server_hostname="localhost")
    anonymous = X1Client(x1world.xk, None)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            anonymous.post(request("ping"))
    finally:
        anonymous.close()
