"""An independent decoder agrees with our layout: Wireshark's MIKEY dissector (tshark) reads the
RFC 3830 messages we encode (PSK init with SP and KEMAC, PSK verification message) and an Error
message carrying values of the open registries (ERR 13 and an unassigned Error no, IDRkmsi and a
private-range ID Role / unassigned ID Type) with the same field values and no malformed-packet
mark.  The pcap is built by hand (UDP to port 2269)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from firmware.mikey import codec as c
from firmware.mikey import crypto
from firmware.mikey.constants import (
    DataType,
    EncrAlg,
    ErrNo,
    IdRole,
    IdType,
    KeyDataType,
    MacAlg,
    SrtpParam,
    TsType,
)
from firmware.mikey.message import Message, encode
from firmware.mikey.prf import PrfFunc

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def _pcap(payloads: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # Ethernet
    for n, data in enumerate(payloads):
        udp = struct.pack("!HHHH", 40000, 2269, 8 + len(data), 0) + data
        total = 20 + len(udp)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, n, 0, 64, 17, 0,
                         bytes((127, 0, 0, 1)), bytes((127, 0, 0, 2)))  # fmt: skip
        csum = sum(struct.unpack("!10H", ip))
        csum = (csum & 0xFFFF) + (csum >> 16)
        ip = ip[:10] + struct.pack("!H", ~csum & 0xFFFF) + ip[12:]
        frame = b"\x00" * 6 + b"\x00\x11\x22\x33\x44\x55" + b"\x08\x00" + ip + udp
        out += struct.pack("<IIII", 1700000000 + n, 0, len(frame), len(frame)) + frame
    return out


def _open_registry_error(t: c.Timestamp) -> bytes:
    header = c.Header(DataType.ERROR, 0x11223344, c.EmptyMap(), PrfFunc.MIKEY_1, False)
    return encode(Message(header, (t, c.ErrorPayload(ErrNo.UNSUPPORTED_MESSAGE_TYPE),
                                   c.ErrorPayload(200),
                                   c.RoleIdentity(IdRole.IDRkmsi, IdType.URI, b"sip:kms.example"),
                                   c.RoleIdentity(241, 9, b"private"))))  # fmt: skip


def _messages() -> tuple[bytes, bytes, bytes]:
    psk, csb, rand = b"secret-psk-0123", 0x11223344, bytes(range(16))
    t = c.Timestamp(TsType.NTP_UTC, bytes.fromhex("e1d2c3b4a5968778"))
    sp = c.SecurityPolicy(0, 0, tuple(c.PolicyParam(p, bytes((v,))) for p, v in (
        (SrtpParam.ENCR_ALG, 1), (SrtpParam.SESSION_ENCR_KEY_LEN, 16), (SrtpParam.AUTH_ALG, 1),
        (SrtpParam.SESSION_AUTH_KEY_LEN, 20), (SrtpParam.SESSION_SALT_LEN, 14),
        (SrtpParam.AUTH_TAG_LEN, 10))))  # fmt: skip
    label = lambda k: struct.pack("!IB", k, 0xFF) + struct.pack("!I", csb) + rand  # noqa: E731
    keys = crypto.MessageKeys(
        crypto.fast_prf(PrfFunc.MIKEY_1, psk, label(0x150533E1), 16),
        crypto.fast_prf(PrfFunc.MIKEY_1, psk, label(0x2D22AC75), 20),
        crypto.fast_prf(PrfFunc.MIKEY_1, psk, label(0x29B88916), 14),
    )
    tgk = c.KeyData(KeyDataType.TEK_SALT, bytes(range(100, 116)), bytes(range(14)),
                    c.KvSpi(b"\x07\x08"))  # fmt: skip
    plain = c.serialize_key_data([tgk])
    encr = crypto.kemac_crypt(EncrAlg.AES_CM_128, keys, csb, t.value, plain, decrypt=False)
    header = c.Header(DataType.PSK_INIT, csb, c.SrtpIdMap((c.SrtpIdEntry(0, 0xDEADBEEF, 5),)),
                      PrfFunc.MIKEY_1, True)  # fmt: skip
    body = [t, c.Identity(IdType.URI, b"sip:alice@example.com"), sp, c.Rand(rand),
            c.Kemac(EncrAlg.AES_CM_128, encr, MacAlg.HMAC_SHA_1_160, bytes(20))]  # fmt: skip
    draft = encode(Message(header, tuple(body)))
    i_msg = draft[:-20] + crypto.compute_mac(MacAlg.HMAC_SHA_1_160, keys.auth_key, draft[:-20])
    r_header = c.Header(DataType.PSK_RESP, csb, header.cs_map, PrfFunc.MIKEY_1, False)
    r_draft = encode(Message(r_header, (t, c.Verification(MacAlg.HMAC_SHA_1_160, bytes(20)))))
    r_msg = r_draft[:-20] + crypto.compute_mac(MacAlg.HMAC_SHA_1_160, keys.auth_key,
                                               r_draft[:-20] + t.value)  # fmt: skip
    null_kemac = encode(Message(header, (t, c.Rand(rand), c.Kemac(EncrAlg.NULL, plain,
                                                                 MacAlg.NULL, b""))))  # fmt: skip
    return i_msg, r_msg, null_kemac


def _fields(tree: object, out: dict[str, list[str]]) -> None:
    if isinstance(tree, dict):
        for k, v in tree.items():
            if isinstance(v, str):
                out.setdefault(k, []).append(v)
            else:
                _fields(v, out)
    elif isinstance(tree, list):
        for v in tree:
            _fields(v, out)


def _dissect(tmp_path: Path, msgs: list[bytes]) -> list[dict[str, list[str]]]:
    f = tmp_path / "mikey.pcap"
    f.write_bytes(_pcap(msgs))
    proc = subprocess.run(["tshark", "-r", str(f), "-d", "udp.port==2269,mikey", "-T", "json",
                           "--no-duplicate-keys"],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert "malformed" not in proc.stdout.lower()
    frames = []
    for pkt in json.loads(proc.stdout):
        out: dict[str, list[str]] = {}
        _fields(pkt["_source"]["layers"].get("mikey", {}), out)
        assert "_ws.malformed" not in json.dumps(pkt)
        frames.append(out)
    return frames


def _int(v: str) -> int:
    return int(v, 0)


def test_tshark_reads_our_psk_init_and_verification_message_with_the_same_values(
    tmp_path: Path,
) -> None:
    i_msg, r_msg, null_kemac = _messages()
    error = _open_registry_error(c.Timestamp(TsType.NTP_UTC, bytes.fromhex("e1d2c3b4a5968778")))
    fi, fr, fn, fe = _dissect(tmp_path, [i_msg, r_msg, null_kemac, error])
    assert fi, "tshark did not dissect the MIKEY payload"
    assert _int(fi["mikey.version"][0]) == 1 and _int(fi["mikey.type"][0]) == 0
    assert _int(fi["mikey.csb_id"][0]) == 0x11223344
    assert _int(fi["mikey.srtp_id.ssrc"][0]) == 0xDEADBEEF
    assert _int(fi["mikey.srtp_id.roc"][0]) == 5
    assert fi["mikey.id.data"][0] == "sip:alice@example.com"
    assert _int(fi["mikey.sp.encr_len"][0]) == 16
    assert _int(fi["mikey.sp.auth_tag_len"][0]) == 10
    assert _int(fi["mikey.rand.len"][0]) == 16
    assert _int(fi["mikey.kemac.encr_alg"][0]) == 1 and _int(fi["mikey.kemac.mac_alg"][0]) == 1
    assert fi["mikey.kemac.mac"][0].replace(":", "") == i_msg[-20:].hex()
    assert _int(fr["mikey.type"][0]) == 1
    assert _int(fr["mikey.v.auth_alg"][0]) == 1
    assert fr["mikey.v.ver_data"][0].replace(":", "") == r_msg[-20:].hex()
    # with NULL encryption Wireshark decodes the key data sub-payload itself
    assert _int(fn["mikey.key.type"][0]) == KeyDataType.TEK_SALT
    assert _int(fn["mikey.key.kv"][0]) == 1
    assert fn["mikey.key.data"][0].replace(":", "") == bytes(range(100, 116)).hex()
    assert fn["mikey.key.kv.spi"][0].replace(":", "") == "0708"
    # open registries: the values we keep as raw ints are the ones Wireshark shows
    assert _int(fe["mikey.type"][0]) == DataType.ERROR
    assert [_int(v) for v in fe["mikey.err.no"]] == [13, 200]
    assert [_int(v) for v in fe["mikey.id.role"]] == [IdRole.IDRkmsi, 241]
    assert [_int(v) for v in fe["mikey.id.type"]] == [IdType.URI, 9]
    assert fe["mikey.id.data"] == ["sip:kms.example", "private"]
