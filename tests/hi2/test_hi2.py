"""HI2 key delivery of the reference DF2: the IRI record we write (asn1tools, from the module
text) decoded by independent decoders (pyasn1 types declared by hand; TShark's generic BER
dissector, as TShark 4.0 has no EPS HI2 dissector: shared/spec/li-interfaces.md 2.5), and its
delivery over mutual TLS 1.3 to a small LEMF receiver through `kmsnode df2 get-keys`."""

from __future__ import annotations

import shutil
import socket
import ssl
import stat
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyasn1.codec.ber import decoder, encoder

from firmware import cli
from firmware.hi2 import record
from firmware.hi2.record import HI2_EPS_DOMAIN_ID, KeyDelivery, SessionKey
from firmware.mikey.sdp import add_key_mgmt
from tests.hi2.pyasn1_spec import EpsIRIContent
from tests.xk.conftest import BOB, Xk, unique, xk  # noqa: F401  (xk: the fixture)

KEY, SALT = bytes(range(16)), bytes(range(100, 114))
DELIVERY = KeyDelivery(
    "LIID-0001",
    "sip:alice@example.com",
    True,
    "corr-0001",
    [SessionKey(1, KEY, SALT), SessionKey(2, bytes(16), b"")],
    1_767_268_845.0,  # 2026-01-01T12:00:45Z
)


def _pyasn1(data: bytes):  # type: ignore[no-untyped-def]
    value, rest = decoder.decode(data, asn1Spec=EpsIRIContent())
    assert rest == b""
    return value["iRI-Report-record"]


# --- the record ---------------------------------------------------------------------------------


def test_the_record_decodes_with_the_module_it_was_encoded_from() -> None:
    kind, params = record.decode(record.encode(DELIVERY))
    assert kind == "iRI-Report-record"
    assert params["hi2epsDomainId"] == HI2_EPS_DOMAIN_ID
    assert params["iMSevent"] == "decryptionKeysAvailable"
    assert params["mediaDecryption-info"][0] == {
        "cCCSID": b"\x01",
        "cCDecKey": KEY,
        "cCSalt": SALT,
    }


def test_an_independent_decoder_reads_every_member_we_write_and_re_encodes_the_same_bytes() -> None:
    data = record.encode(DELIVERY)
    value, _ = decoder.decode(data, asn1Spec=EpsIRIContent())
    assert encoder.encode(value) == data  # pyasn1's own BER encoder agrees byte for byte
    params = _pyasn1(data)
    assert str(params["hi2epsDomainId"]) == "0.4.0.2.2.4.8.16.1"
    assert bytes(params["lawfulInterceptionIdentifier"]) == b"LIID-0001"
    assert str(params["timeStamp"]["utcTime"]) == "260101120045Z"
    assert str(params["initiator"]) == "originating-Target"
    (party,) = list(params["partyInformation"])
    assert str(party["party-Qualifier"]) == "originating-Party"
    assert bytes(party["partyIdentity"]["sip-uri"]) == b"sip:alice@example.com"
    assert int(params["iMSevent"]) == 3  # decryptionKeysAvailable
    assert bytes(params["correlation"]["iri-to-iri"]) == b"corr-0001"
    keys = [
        (bytes(k["cCCSID"]), bytes(k["cCDecKey"]), k["cCSalt"].hasValue())
        for k in params["mediaDecryption-info"]
    ]
    assert keys == [(b"\x01", KEY, True), (b"\x02", bytes(16), False)]
    assert bytes(params["mediaDecryption-info"][0]["cCSalt"]) == SALT


def test_a_responder_target_with_a_tel_uri_and_no_correlation() -> None:
    delivery = KeyDelivery("L", "tel:+15550100", False, "", [SessionKey(7, KEY, SALT)], 0.0)
    params = _pyasn1(record.encode(delivery))
    assert str(params["initiator"]) == "terminating-Target"
    (party,) = list(params["partyInformation"])
    assert bytes(party["partyIdentity"]["tel-url"]) == b"tel:+15550100"
    assert not params["correlation"].hasValue()


def test_the_record_starts_with_the_tags_of_ts_33_108() -> None:
    data = record.encode(DELIVERY)
    assert data[0] == 0xA4  # [4] iRI-Report-record, constructed
    assert bytes.fromhex("8008040002020408100181094c4949442d30303031") in data  # [0] OID, [1] LIID
    assert bytes.fromhex("9d0103") in data  # [29] iMSevent decryptionKeysAvailable
    assert bytes.fromhex("bf2a") in data  # [42] mediaDecryption-info


@pytest.mark.parametrize(
    ("liid", "sessions", "why"),
    [("L" * 26, [SessionKey(1, KEY, SALT)], "25 octets"), ("L", [], "crypto session")],
)
def test_refuses_what_the_module_cannot_hold(
    liid: str, sessions: list[SessionKey], why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        record.encode(KeyDelivery(liid, "sip:a@b", True, "", sessions, 0.0))


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tsharks_ber_dissector_shows_the_tag_tree(tmp_path: Path) -> None:
    data = record.encode(DELIVERY)
    pcap = tmp_path / "hi2.pcap"
    pcap.write_bytes(
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147)  # DLT_USER0
        + struct.pack("<IIII", 0, 0, len(data), len(data))
        + data
    )
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-V",
            "-o",
            'uat:user_dlts:"User 0 (DLT=147)","ber","0","","0",""',
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    tree = [line.strip() for line in out.splitlines() if "[CONTEXT" in line or "SEQUENCE" in line]
    assert tree[0] == "[CONTEXT 4]"
    assert "[CONTEXT 1] 4c4949442d30303031 (LIID-0001)" in tree
    assert "[CONTEXT 29] 03" in tree
    assert f"[CONTEXT 2] {KEY.hex()}" in tree
    assert any(line.startswith(f"[CONTEXT 3] {SALT.hex()}") for line in tree)


# --- delivery ------------------------------------------------------------------------------------


class Lemf:
    """A LEMF receiver: mutual TLS 1.3 (the LI server certificate, clients of the LI CA), reads
    each connection to its end and keeps what it got."""

    def __init__(self, pki: Path, tls12_only: bool = False) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if tls12_only:  # a LEMF that never got past TLS 1.2
            self.ctx.minimum_version = self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.ctx.load_cert_chain(pki / "li-server.pem", pki / "li-server.key")
        self.ctx.load_verify_locations(pki / "li-ca.pem")
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.peers: list[str] = []
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            raw.settimeout(30)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as tls:
                    cert = tls.getpeercert()
                    chunks = []
                    while chunk := tls.recv(65536):
                        chunks.append(chunk)
                    tls.unwrap()
                    self.received.append(b"".join(chunks))
                    self.peers.append(str(cert.get("subjectAltName")) if cert else "")
            except (OSError, ssl.SSLError):
                pass
            finally:
                self.done.set()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def lemf(xk: Xk) -> Iterator[Lemf]:  # noqa: F811
    receiver = Lemf(xk.rn.pki)
    try:
        yield receiver
    finally:
        receiver.close()


def _get_keys(xk: Xk, tmp_path: Path, *extra: str) -> tuple[int, list[tuple[int, bytes, bytes]]]:  # noqa: F811
    liid = xk.warrant(BOB)
    call = xk.call()
    offer, answer = tmp_path / "offer.sdp", tmp_path / "answer.sdp"
    offer.write_text(add_key_mgmt("v=0\r\nm=audio 49170 RTP/SAVP 0\r\n", call.transfer_init))
    answer.write_text(add_key_mgmt("v=0\r\nm=audio 5004 RTP/SAVP 0\r\n", call.transfer_resp))
    pki = xk.rn.pki
    code = cli.main(
        [
            "df2", "get-keys", "--config", str(xk.rn.cfg.path),
            "--endpoint", f"localhost:{xk.node.li_port}",
            "--ca", str(pki / "ca.pem"),
            "--cert", str(pki / "df2.pem"), "--key", str(pki / "df2.key"),
            "--hi2-ca", str(pki / "ca.pem"),
            "--target", BOB, "--role", "responder", "--liid", liid,
            "--sdp-offer", str(offer), "--sdp-answer", str(answer),
            "--correlation-id", unique("corr"),
            *extra,
        ]
    )  # fmt: skip
    keys = [(k.cs_id, k.tek, k.salt) for k in call.bob_keys]
    return code, keys


def test_get_keys_delivers_the_released_keys_to_the_lemf_over_mutual_tls(
    xk: Xk,  # noqa: F811
    lemf: Lemf,
    tmp_path: Path,
) -> None:
    out = tmp_path / "iri.ber"
    code, keys = _get_keys(
        xk, tmp_path, "--hi2-to", f"localhost:{lemf.port}", "--hi2-out", str(out)
    )
    assert code == 0
    assert lemf.done.wait(30)
    (data,) = lemf.received
    assert "df2.li.example.net" in lemf.peers[0]  # the DF2 presented its certificate
    assert out.read_bytes() == data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    params = _pyasn1(data)
    got = [
        (bytes(k["cCCSID"])[0], bytes(k["cCDecKey"]), bytes(k["cCSalt"]))
        for k in params["mediaDecryption-info"]
    ]
    assert got == keys
    assert str(params["initiator"]) == "terminating-Target"  # bob answered the call


def test_a_lemf_that_does_not_verify_is_not_delivered_to(
    xk: Xk,  # noqa: F811
    lemf: Lemf,
    tmp_path: Path,
) -> None:
    # The LEMF's certificate is checked against the CA given: the UE CA did not issue it.
    code, _ = _get_keys(
        xk,
        tmp_path,
        "--hi2-to",
        f"localhost:{lemf.port}",
        "--hi2-ca",
        str(xk.rn.pki / "ue-ca.pem"),
    )
    assert code == 1
    assert lemf.received == []


def test_a_lemf_that_speaks_only_tls12_is_not_delivered_to(
    xk: Xk,  # noqa: F811
    tmp_path: Path,
) -> None:
    old = Lemf(xk.rn.pki, tls12_only=True)
    try:
        code, _ = _get_keys(xk, tmp_path, "--hi2-to", f"localhost:{old.port}")
        assert code == 1
        assert old.done.wait(30)  # the handshake was tried and failed
        assert old.received == []
    finally:
        old.close()
