"""MIKEY over HTTPS through the real node (SoftHSM, TLS on loopback) with an independent client
(http.client over the standard library's ssl): whole calls, every status, keep-alive, caps,
TLS policy and the TLS identity binding."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from firmware.devpki import issue
from firmware.mikey.constants import DataType, ErrNo
from firmware.mikey.exchange import Initiator
from firmware.mikey.message import decode
from firmware.mikey.prf import PrfFunc
from hsm.softhsm import SoftHsmToken
from hsm.vault import VaultSettings
from tests.api.conftest import RunningNode
from tests.calls import ALICE, ALICE_PSK, BOB, KMS, full_call, requested_policy, t_at, ues
from tests.http.conftest import MIKEY, UeHttps, start_http_node

pytestmark = pytest.mark.softhsm


@contextlib.contextmanager
def _raw_tls(https: UeHttps) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to the listener on which the test writes HTTP bytes itself."""
    with (
        socket.create_connection(("127.0.0.1", https.port), timeout=30) as raw,
        https.context().wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        yield tls


def _request(now: float, initiator: Initiator | None = None) -> bytes:
    alice = initiator or ues(PrfFunc.MIKEY_1)[0]
    return alice.request_init(
        csb_id=7,
        t=t_at(now),
        rand_i=os.urandom(32),
        policy=requested_policy(PrfFunc.MIKEY_1, True, [BOB.encode()]),
    )


def _error_numbers(data: bytes) -> list[int]:
    msg = decode(data)
    assert msg.header.data_type == DataType.ERROR
    return [p.err_no for p in msg.payloads if type(p).__name__ == "ErrorPayload"]


def _requests(rn: RunningNode, code: str) -> float:
    value = rn.node.metrics.registry.get_sample_value(
        "kmsnode_requests_total", {"method": "Exchange", "code": code}
    )
    return value or 0.0


# --- whole calls -------------------------------------------------------------------------------


@pytest.mark.parametrize("prf", list(PrfFunc))
def test_a_call_over_https_gives_both_ues_the_same_keys(https: UeHttps, prf: PrfFunc) -> None:
    call = full_call(https.exchange, https.rn.clock.now, prf)
    assert decode(call.request_resp).header.data_type == DataType.REQUEST_RESP
    assert decode(call.resolve_resp).header.data_type == DataType.RESOLVE_RESP
    assert [(k.tek, k.salt) for k in call.alice_keys] == [(k.tek, k.salt) for k in call.bob_keys]


def test_keeps_one_connection_alive_across_request_and_resolve(https: UeHttps) -> None:
    full_call(https.exchange, https.rn.clock.now)
    first = https.conn.sock
    full_call(https.exchange, https.rn.clock.now)
    assert https.conn.sock is first  # http.client reconnects when the server closes
    assert https.rn.node.ue_http is not None
    assert https.rn.node.ue_http.open_connections == 1


def test_counts_https_exchanges_in_the_ticket_service_metrics(https: UeHttps) -> None:
    before = _requests(https.rn, "OK")
    full_call(https.exchange, https.rn.clock.now)
    assert _requests(https.rn, "OK") == before + 2


# --- refusals ----------------------------------------------------------------------------------


def test_an_unparseable_request_gets_400_with_the_mikey_error_number(https: UeHttps) -> None:
    answer = https.post(b"\x01\x0b\x05\x80garbage")
    assert answer.status == 400
    assert answer.body == b""
    assert int(answer.headers["mikey-error"]) >= 0
    assert answer.headers["kms-reason"] == "MALFORMED_MESSAGE"


def test_a_wrong_psk_gets_400_with_err_auth_failure_and_no_mikey_answer(https: UeHttps) -> None:
    liar = Initiator(ALICE.encode(), os.urandom(32), KMS)
    answer = https.post(_request(https.rn.clock.now, liar))
    assert (answer.status, answer.body) == (400, b"")
    assert int(answer.headers["mikey-error"]) == ErrNo.AUTH_FAILURE
    assert answer.headers["kms-reason"] == "AUTHENTICATION_FAILED"


def test_a_replayed_request_gets_400_with_err_invalid_ts(https: UeHttps) -> None:
    data = _request(https.rn.clock.now)
    https.exchange(data)
    answer = https.post(data)
    assert answer.status == 400
    assert int(answer.headers["mikey-error"]) == ErrNo.INVALID_TS


def test_an_authenticated_request_that_cannot_be_served_gets_a_mikey_error_message(
    https: UeHttps,
) -> None:
    liar = Initiator(BOB.encode(), ALICE_PSK, KMS, psk_id=ALICE.encode())
    assert _error_numbers(https.exchange(_request(https.rn.clock.now, liar))) == [ErrNo.INVALID_ID]


@pytest.mark.parametrize(
    "content_type", [None, "application/octet-stream", "application/mikey; version=2", "text/xml"]
)
def test_another_content_type_gets_415(https: UeHttps, content_type: str | None) -> None:
    answer = https.post(_request(https.rn.clock.now), content_type=content_type)
    assert answer.status == 415
    assert answer.headers["accept"] == MIKEY


def test_the_media_type_is_matched_case_insensitively_with_version_1(https: UeHttps) -> None:
    answer = https.post(_request(https.rn.clock.now), content_type='Application/MIKEY; version="1"')
    assert answer.status == 200


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS"])
def test_other_methods_get_405(https: UeHttps, method: str) -> None:
    answer = https.post(b"", method=method)
    assert answer.status == 405
    assert answer.headers["allow"] == "POST"


def test_another_path_gets_404(https: UeHttps) -> None:
    assert https.post(_request(https.rn.clock.now), path="/other").status == 404


def test_a_body_over_the_cap_gets_413_before_it_is_read(https: UeHttps) -> None:
    # Only the head is sent: the server answers from the Content-Length alone.
    with _raw_tls(https) as tls:
        tls.sendall(
            b"POST /mikey HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/mikey\r\n"
            b"Content-Length: 4097\r\n\r\n"
        )
        head = tls.recv(4096)
    assert head.startswith(b"HTTP/1.1 413 ")


def test_a_body_at_the_cap_is_read_and_judged_by_the_core(https: UeHttps) -> None:
    answer = https.post(b"\x01" * 4096)
    assert answer.status == 400
    assert answer.headers["kms-reason"] == "MALFORMED_MESSAGE"


def test_a_chunked_body_gets_411(https: UeHttps) -> None:
    https.conn.putrequest("POST", "/mikey")
    https.conn.putheader("Content-Type", MIKEY)
    https.conn.putheader("Transfer-Encoding", "chunked")
    https.conn.endheaders()
    https.conn.send(b"4\r\nabcd\r\n0\r\n\r\n")
    assert https.conn.getresponse().status == 411


def test_a_body_without_a_content_length_gets_411(https: UeHttps) -> None:
    with _raw_tls(https) as tls:
        tls.sendall(
            b"POST /mikey HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/mikey\r\n\r\n"
        )
        assert tls.recv(4096).startswith(b"HTTP/1.1 411 ")


def test_a_transfer_coding_beside_a_content_length_gets_411(https: UeHttps) -> None:
    # Both framings at once is the request-smuggling shape: refused, never read either way.
    with _raw_tls(https) as tls:
        tls.sendall(
            b"POST /mikey HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/mikey\r\n"
            b"Content-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
        )
        assert tls.recv(4096).startswith(b"HTTP/1.1 411 ")


def test_a_request_that_does_not_complete_in_time_is_dropped(https: UeHttps) -> None:
    # request_timeout = 2 s in this module's node: a slow sender cannot hold the thread.
    with _raw_tls(https) as tls:
        tls.sendall(b"POST /mikey HTTP/1.1\r\nHost: local")
        assert tls.recv(4096) == b""  # closed by the server well before our 30 s


def test_a_malformed_head_gets_400_and_the_connection_is_closed(https: UeHttps) -> None:
    with _raw_tls(https) as tls:
        tls.sendall(b"POST /mikey HTTP/1.1\r\nNo colon here\r\n\r\n")
        assert tls.recv(4096).startswith(b"HTTP/1.1 400 ")
        assert tls.recv(4096) == b""


def test_a_head_over_the_cap_gets_431_when_it_arrives_whole(https: UeHttps) -> None:
    # max_header_bytes = 8192 (default): 12 kB of head in one TLS record, complete.
    with _raw_tls(https) as tls:
        tls.sendall(
            b"POST /mikey HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/mikey\r\n"
            b"X-Pad: " + b"a" * 12000 + b"\r\nContent-Length: 1\r\n\r\nx"
        )
        assert tls.recv(4096).startswith(b"HTTP/1.1 431 ")


def test_a_head_over_the_cap_gets_431_before_it_ends(https: UeHttps) -> None:
    # 12 kB of head with no end yet: refused at the cap, not waited for.
    with _raw_tls(https) as tls:
        tls.sendall(b"POST /mikey HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"a" * 12000)
        assert tls.recv(4096).startswith(b"HTTP/1.1 431 ")


@pytest.fixture
def tight(
    tmp_path: Path, softhsm_token: SoftHsmToken, vault_settings: VaultSettings, _vault_keys: None
) -> Iterator[UeHttps]:
    """A node of its own with small connection caps (2 connections, 1 s timeouts)."""
    rn = start_http_node(
        tmp_path,
        softhsm_token,
        vault_settings,
        extra="max_connections = 2\nhandshake_timeout = 1.0\nidle_timeout = 1.0",
    )
    client = UeHttps(rn)
    try:
        yield client
    finally:
        client.close()
        rn.node.stop(1.0)


def test_a_connection_over_max_connections_is_closed_at_accept(tight: UeHttps) -> None:
    first, second = UeHttps(tight.rn), UeHttps(tight.rn)
    try:
        for client in (first, second):  # both handshaken: the server holds two connections
            assert client.post(b"", content_type="text/plain").status == 415
        with pytest.raises((ssl.SSLError, ConnectionError)), _raw_tls(tight):
            pass
        assert first.post(b"", content_type="text/plain").status == 415  # still served
    finally:
        first.close()
        second.close()


def test_a_client_that_never_starts_tls_is_dropped_after_the_handshake_timeout(
    tight: UeHttps,
) -> None:
    with socket.create_connection(("127.0.0.1", tight.port), timeout=20) as raw:
        assert raw.recv(4096) == b""  # closed by the server (1 s), well before our 20 s


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(tight: UeHttps) -> None:
    with _raw_tls(tight) as tls:
        tls.settimeout(20)
        tls.sendall(b"POST /mikey HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        answer = tls.recv(4096)
        assert answer.startswith(b"HTTP/1.1 415 ") and b"close" not in answer.lower()
        assert tls.recv(4096) == b""  # closed by the server (1 s), well before our 20 s


# --- TLS ---------------------------------------------------------------------------------------


def _handshake(port: int, pki: Path, **opts: object) -> tuple[str, str, bytes]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki / "ca.pem")
    if "max_version" in opts:
        ctx.maximum_version = opts["max_version"]  # type: ignore[assignment]
    if "ciphers" in opts:
        ctx.set_ciphers(str(opts["ciphers"]))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return tls.version() or "", tls.cipher()[0], der  # type: ignore[index]


def test_speaks_tls13_and_tls12_with_aead_only_and_names_the_kms_identity(
    https: UeHttps,
) -> None:
    version, _, der = _handshake(https.port, https.rn.pki)
    assert version == "TLSv1.3"
    names = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert KMS.decode() in names.value.get_values_for_type(x509.UniformResourceIdentifier)
    version, cipher, _ = _handshake(https.port, https.rn.pki, max_version=ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2" and "GCM" in cipher
    with pytest.raises(ssl.SSLError):
        _handshake(
            https.port,
            https.rn.pki,
            max_version=ssl.TLSVersion.TLSv1_2,
            ciphers="ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:AES128-SHA",
        )


# --- configured variants -----------------------------------------------------------------------


def test_base64_bodies_when_so_configured(
    tmp_path: Path, softhsm_token: SoftHsmToken, vault_settings: VaultSettings, _vault_keys: None
) -> None:
    rn = start_http_node(
        tmp_path,
        softhsm_token,
        vault_settings,
        extra='body_encoding = "base64"\npath = "/kms/ticket"\nerror_header = "X-Mikey-Err"',
    )
    client = UeHttps(rn, path="/kms/ticket")
    try:

        def exchange(data: bytes) -> bytes:
            return base64.b64decode(client.exchange(base64.b64encode(data)), validate=True)

        call = full_call(exchange, rn.clock.now)
        assert call.alice_keys[0].tek == call.bob_keys[0].tek
        answer = client.post(b"not base64 !")
        assert answer.status == 400 and "x-mikey-err" in answer.headers
    finally:
        client.close()
        rn.node.stop(1.0)


def _ue_certificate(pki: Path, stem: str, uri: str) -> None:
    issue(pki, stem, [x509.UniformResourceIdentifier(uri)], ca="ue")


@pytest.fixture
def bound(
    tmp_path: Path, softhsm_token: SoftHsmToken, vault_settings: VaultSettings, _vault_keys: None
) -> Iterator[RunningNode]:
    """A node of its own that binds IDRi / IDRr to the UE's client certificate."""
    rn = start_http_node(
        tmp_path,
        softhsm_token,
        vault_settings,
        extra='tls_identity = "client-certificate"\nclient_ca = "pki/ue-ca.pem"',
    )
    try:
        yield rn
    finally:
        rn.node.stop(1.0)


def test_binds_idri_and_idrr_to_the_client_certificate_when_so_configured(
    bound: RunningNode,
) -> None:
    rn = bound
    _ue_certificate(rn.pki, "alice-ue", ALICE)
    _ue_certificate(rn.pki, "bob-ue", BOB)
    alice, bob = UeHttps(rn, "alice-ue"), UeHttps(rn, "bob-ue")
    anonymous, wrong = UeHttps(rn), UeHttps(rn, "bob-ue")
    try:
        now = rn.clock.now
        # alice's request over alice's certificate, bob's resolve over bob's: served
        exchanges = iter([alice.exchange, bob.exchange])
        call = full_call(lambda data: next(exchanges)(data), now)
        assert call.alice_keys[0].tek == call.bob_keys[0].tek
        # alice's request over bob's certificate, or over no certificate: ERR 7
        assert _error_numbers(wrong.exchange(_request(now))) == [ErrNo.INVALID_ID]
        assert _error_numbers(anonymous.exchange(_request(now))) == [ErrNo.INVALID_ID]
    finally:
        for client in (alice, bob, anonymous, wrong):
            client.close()


def test_a_revoked_client_certificate_binds_no_identity(bound: RunningNode) -> None:
    rn = bound
    _ue_certificate(rn.pki, "alice-ue", ALICE)
    alice = UeHttps(rn, "alice-ue")
    try:
        now = rn.clock.now
        assert decode(alice.exchange(_request(now))).header.data_type == DataType.REQUEST_RESP
        der = x509.load_pem_x509_certificate((rn.pki / "alice-ue.pem").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        text = rn.cfg.path.read_text()
        revoked = f'[roles]\nrevoked = ["sha256:{hashlib.sha256(der).hexdigest()}"]\n'
        rn.cfg.path.write_text(text.replace("[roles]\n", revoked, 1))
        assert rn.node.reload_roles()
        # the same certificate, now revoked, proves no identity: alice's request gets ERR 7
        assert _error_numbers(alice.exchange(_request(now + 1))) == [ErrNo.INVALID_ID]
    finally:
        alice.close()


def test_without_binding_a_client_certificate_is_optional_and_binds_nothing(
    https: UeHttps,
) -> None:
    # The module's node asks for no binding: bob's certificate does not stop alice's request.
    _ue_certificate(https.rn.pki, "bob-any", BOB)
    other = UeHttps(https.rn, "bob-any")
    try:
        answer = other.exchange(_request(https.rn.clock.now))
        assert decode(answer).header.data_type == DataType.REQUEST_RESP
    finally:
        other.close()
