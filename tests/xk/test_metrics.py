"""The Prometheus endpoint ([metrics] address, loopback): requests by method and status, latency
histograms, HSM operation latency, alarms by reason, audit records and HSM availability, each
moving by exactly what the node did through its real listeners."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Mapping

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from firmware.api.proto.kms.v1 import kms_pb2
from tests.xk.conftest import ALICE, BOB, DEADLINE, INITIATOR, RESPONDER, Xk

pytestmark = pytest.mark.softhsm

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(xk: Xk) -> tuple[str, Samples]:
    host, port = xk.node.metrics_server.server_address[:2]
    assert host == "127.0.0.1"  # loopback only
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=DEADLINE) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_the_endpoint_counts_what_the_node_did(xk: Xk) -> None:
    call = xk.call(forking=False)
    liid = xk.warrant(BOB)
    _, before = scrape(xk)

    xk.get_keys(call.transfer_init, BOB, RESPONDER, liid, call.transfer_resp)
    xk.get_keys(call.transfer_init, BOB, RESPONDER, liid)
    refusals = [
        (call.transfer_init, BOB, INITIATOR, grpc.StatusCode.PERMISSION_DENIED),  # mismatch
        (b"\x01garbage", BOB, RESPONDER, grpc.StatusCode.INVALID_ARGUMENT),  # malformed
    ]
    for transfer_init, target, role, code in refusals:
        with pytest.raises(grpc.RpcError) as info:
            xk.get_keys(transfer_init, target, role, liid)
        assert info.value.code() == code
    with pytest.raises(grpc.RpcError):  # a DF2 asking an ADMIN RPC
        xk.admin("df2").ListWarrants(kms_pb2.ListWarrantsRequest(), timeout=DEADLINE)
    xk.call(forking=False)  # REQUEST_INIT and RESOLVE_INIT on the UE listener

    text, after = scrape(xk)
    # requests by method and status
    assert delta(before, after, "kmsnode_requests_total", method="GetKeys", code="OK") == 2
    for method, code in [
        ("GetKeys", "PERMISSION_DENIED"),
        ("GetKeys", "INVALID_ARGUMENT"),
        ("ListWarrants", "PERMISSION_DENIED"),
    ]:
        assert delta(before, after, "kmsnode_requests_total", method=method, code=code) == 1
    assert delta(before, after, "kmsnode_requests_total", method="Exchange", code="OK") == 2
    # latency histograms, per method
    for method, n in [("GetKeys", 4), ("Exchange", 2), ("ListWarrants", 1)]:
        assert delta(before, after, "kmsnode_request_seconds_count", method=method) == n
        assert delta(before, after, "kmsnode_request_seconds_bucket", method=method, le="+Inf") == n
        assert delta(before, after, "kmsnode_request_seconds_sum", method=method) > 0
    # HSM operation latency: the ticket PRFs of every GetKeys that got to the ticket (3), the
    # audit MACs (record + signed head) of its 5 records, the PSK unwraps of the call
    assert delta(before, after, "kmsnode_hsm_op_seconds_count", op="ticket_prf") >= 3
    assert delta(before, after, "kmsnode_hsm_op_seconds_count", op="audit_hmac") >= 10
    assert delta(before, after, "kmsnode_hsm_op_seconds_count", op="psk_prf") >= 2
    assert value(after, "kmsnode_hsm_op_seconds_bucket", op="ticket_prf", le="0.1") > 0
    # alarms by reason; audit records
    assert delta(before, after, "kmsnode_alarms_total", reason="TARGET_MISMATCH") == 1
    assert delta(before, after, "kmsnode_alarms_total", reason="ROLE_NOT_ALLOWED") == 1
    assert delta(before, after, "kmsnode_alarms_total", reason="MALFORMED_MESSAGE") == 1
    # refusals by method and reason (every refusal, whatever its reason)
    for method, reason in [
        ("GetKeys", "TARGET_MISMATCH"),
        ("GetKeys", "MALFORMED_MESSAGE"),
        ("ListWarrants", "ROLE_NOT_ALLOWED"),
    ]:
        assert delta(before, after, "kmsnode_refusals_total", method=method, reason=reason) == 1
    assert delta(before, after, "kmsnode_audit_records_total") == 5
    assert value(after, "kmsnode_audit_records_total") == xk.node.audit.count
    # no identity and no key in any label or value
    for secret in ("alice", "bob@", "df2.li", "LIID", *(k.tek.hex() for k in call.alice_keys)):
        assert secret not in text


def _families(xk: Xk) -> Mapping[str, str]:
    text, _ = scrape(xk)
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_the_endpoint_names_each_family_with_its_type(xk: Xk) -> None:
    assert {
        "kmsnode_requests": "counter",
        "kmsnode_request_seconds": "histogram",
        "kmsnode_hsm_op_seconds": "histogram",
        "kmsnode_alarms": "counter",
        "kmsnode_audit_records": "counter",
        "kmsnode_hsm_available": "gauge",
    }.items() <= dict(_families(xk)).items()


def test_hsm_availability_follows_the_device(xk: Xk) -> None:
    call, liid = xk.call(forking=False), xk.warrant(ALICE)
    _, before = scrape(xk)
    assert value(before, "kmsnode_hsm_available") == 1
    xk.node.vault.device_removed("test: HSM unplugged")
    try:
        _, gone = scrape(xk)
        with pytest.raises(grpc.RpcError) as info:
            xk.get_keys(call.transfer_init, ALICE, INITIATOR, liid)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        _, still = scrape(xk)
    finally:
        xk.node.vault.device_added()
    for thread in threading.enumerate():  # the loss and return are audited by their own thread
        if thread.name == "hsm-audit":
            thread.join(timeout=DEADLINE)
    _, back = scrape(xk)
    assert value(gone, "kmsnode_hsm_available") == 0
    assert delta(before, gone, "kmsnode_alarms_total", reason="HSM_REMOVED") == 1
    assert delta(gone, still, "kmsnode_requests_total", method="GetKeys", code="UNAVAILABLE") == 1
    assert value(back, "kmsnode_hsm_available") == 1
    assert delta(before, back, "kmsnode_alarms_total", reason="HSM_RESTORED") == 1
    assert delta(before, back, "kmsnode_audit_records_total") == 2  # HSM_REMOVED, HSM_RESTORED
