"""Public captures and published vectors (spec mikey-ticket.md section 10; data/README.md)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from firmware.mikey import crypto
from firmware.mikey.codec import Kemac, Rand, SecurityPolicy, SrtpIdMap, Timestamp, Verification
from firmware.mikey.constants import (
    CONST_AUTH,
    CONST_ENCR,
    CONST_MPKI,
    CONST_MPKR,
    CONST_SALT,
    CONST_TEK,
    CONST_TGK_SALT,
    DataType,
    EncrAlg,
    KeyDataType,
    MacAlg,
)
from firmware.mikey.errors import MikeyError
from firmware.mikey.message import decode, encode
from firmware.mikey.prf import PrfFunc, prf

DATA = Path(__file__).parent / "data"
VEC = json.loads((DATA / "vectors.json").read_text())
I_MSG = (DATA / "mikey_psk_i_message.bin").read_bytes()
R_MSG = (DATA / "mikey_psk_r_message.bin").read_bytes()
H = bytes.fromhex


def _rfc3830_label(const: int, csb_id: bytes, rand: bytes, cs: int = 0xFF) -> bytes:
    return struct.pack("!I", const) + bytes((cs,)) + csb_id + rand


def test_captured_messages_decode_and_reencode_byte_for_byte() -> None:
    for raw in (I_MSG, R_MSG):
        assert encode(decode(raw)) == raw
    i = decode(I_MSG)
    assert i.header.data_type is DataType.PSK_INIT and i.header.v_flag
    assert i.header.csb_id == 0x8AA5717A
    assert isinstance(i.header.cs_map, SrtpIdMap) and len(i.header.cs_map.entries) == 2
    assert [type(p) for p in i.payloads] == [Timestamp, SecurityPolicy, Rand, Kemac]
    assert i.require(Rand).value == H(VEC["pcap_psk"]["rand"])
    assert len(i.require(SecurityPolicy).params) == 13


def test_captured_psk_message_keys_kemac_mac_and_response_mac() -> None:
    v = VEC["pcap_psk"]
    psk, csb, rand = H(v["psk"]), H(v["csb_id"]), H(v["rand"])
    encr = crypto.fast_prf(PrfFunc.MIKEY_1, psk, _rfc3830_label(CONST_ENCR, csb, rand), 16)
    auth = crypto.fast_prf(PrfFunc.MIKEY_1, psk, _rfc3830_label(CONST_AUTH, csb, rand), 20)
    salt = crypto.fast_prf(PrfFunc.MIKEY_1, psk, _rfc3830_label(CONST_SALT, csb, rand), 14)
    assert (encr.hex(), auth.hex(), salt.hex()) == (v["encr_key"], v["auth_key"], v["salt_key"])
    i = decode(I_MSG)
    t = i.require(Timestamp)
    assert crypto.aes_cm_iv(salt, 0x8AA5717A, t.as_64()).hex() == v["aes_cm_iv"]
    kemac = i.require(Kemac)
    assert kemac.mac.hex() == v["kemac_mac"]
    crypto.check_mac(MacAlg.HMAC_SHA_1_160, auth, I_MSG[: len(I_MSG) - 20], kemac.mac)
    r = decode(R_MSG)
    rv = r.payloads[-1]
    assert isinstance(rv, Verification) and rv.mac.hex() == v["r_mac"]
    crypto.check_mac(rv.mac_alg, auth, R_MSG[:40] + H(v["initiator_t"]), rv.mac)
    with pytest.raises(MikeyError):
        crypto.check_mac(rv.mac_alg, auth, R_MSG[:40], rv.mac)


def test_captured_kemac_decrypts_to_a_192_byte_tgk_and_self_computed_tek() -> None:
    v = VEC["pcap_psk"]
    psk, csb, rand = H(v["psk"]), H(v["csb_id"]), H(v["rand"])
    keys = crypto.MessageKeys(H(v["encr_key"]), H(v["auth_key"]), H(v["salt_key"]))
    i = decode(I_MSG)
    kemac = i.require(Kemac)
    plain = crypto.kemac_crypt(
        EncrAlg.AES_CM_128,
        keys,
        0x8AA5717A,
        i.require(Timestamp).as_64(),
        kemac.encr_data,
        decrypt=True,
    )
    from firmware.mikey.codec import parse_key_data

    (tgk,) = parse_key_data(plain)
    assert tgk.key_type is KeyDataType.TGK and len(tgk.key) == 192
    sc = VEC["pcap_psk_self_computed"]
    tek = crypto.fast_prf(PrfFunc.MIKEY_1, tgk.key, _rfc3830_label(CONST_TEK, csb, rand, 0), 16)
    salt = crypto.fast_prf(
        PrfFunc.MIKEY_1, tgk.key, _rfc3830_label(CONST_TGK_SALT, csb, rand, 0), 14
    )
    assert (tek.hex(), salt.hex()) == (sc["tek_cs0"], sc["salt_cs0"])
    assert tek == prf(PrfFunc.MIKEY_1, tgk.key, _rfc3830_label(CONST_TEK, csb, rand, 0), 16)
    del psk


def test_rfc3711_b2_aes_cm_keystream() -> None:
    v = VEC["rfc3711_b2"]
    ks = crypto.aes_cm(H(v["key"]), H(v["counter"]), bytes(48))
    assert ks == H(v["keystream"])


def test_rfc3711_b3_srtp_key_derivation_on_our_aes_cm() -> None:
    v = VEC["rfc3711_b3"]
    salt = int.from_bytes(H(v["master_salt"]), "big")

    def kdf(label: int, n: int) -> bytes:
        x = (salt ^ (label << 48)).to_bytes(14, "big") + b"\x00\x00"
        return crypto.aes_cm(H(v["master_key"]), x, bytes(n))

    assert kdf(0, 16) == H(v["cipher_key"])
    assert kdf(2, 14) == H(v["cipher_salt"])


def test_rfc3394_key_wrap_and_unwrap_with_explicit_iv() -> None:
    v = VEC["rfc3394_4_1"]
    wrapped = crypto.aes_kw_wrap(H(v["kek"]), H(v["iv"]), H(v["key_data"]))
    assert wrapped == H(v["wrapped"])
    assert crypto.aes_kw_unwrap(H(v["kek"]), H(v["iv"]), wrapped) == H(v["key_data"])
    with pytest.raises(MikeyError):
        crypto.aes_kw_unwrap(H(v["kek"]), bytes(8), wrapped)


def test_mikey_ticket_label_vectors_self_computed() -> None:
    v = VEC["mikey_ticket_labels"]
    x = {k: (val.encode() if k == "idrr" else H(val)) for k, val in v["inputs"].items()}
    csb = int.from_bytes(x["csb_id"], "big")
    f = PrfFunc.MIKEY_1
    k1 = crypto.message_keys(f, x["psk"], csb, response=False, rand_i=x["rand_i"], rand_r=None)
    assert k1.auth_key.hex() == v["V1_request_init_auth_key"]
    k2 = crypto.message_keys(
        f,
        x["psk"],
        csb,
        response=True,
        rand_i=x["rand_i"],
        rand_r=None,
        encr_alg=EncrAlg.AES_CM_128,
    )
    assert k2.encr_key.hex() == v["V2_request_resp_encr_key"]
    k5 = crypto.ticket_keys(f, x["tpk"], x["ticket_rand"], EncrAlg.AES_CM_128, MacAlg.NULL)
    assert k5.encr_key.hex() == v["V3_tpk_encr_key"]
    mpki, mpkr = crypto.mpk_split(f, x["mpk"], x["ticket_rand"])
    assert (mpki.hex(), mpkr.hex()) == (v["V4_mpki"], v["V5_mpkr"])
    assert crypto.fork_mpkr(f, mpkr, x["idrr"], x["rand_kms"]).hex() == v["V6_mpkr_forked"]
    assert crypto.tek(f, x["tgk"], 1, x["rand_i"], None).hex() == v["V7_tek_cs1_h"]
    label = crypto.message_key_label(CONST_AUTH, csb, 1, x["rand_i"], None)
    out = crypto.fast_prf(PrfFunc.PRF_HMAC_SHA_256, x["sha256_inkey"], label, 32)
    assert out.hex() == v["V8_prf_sha256"]
    # the ticket key source may be a PRF port (the HSM's TPK) instead of bytes
    port = crypto.ticket_keys(
        f,
        crypto.hmac_port(f, lambda d: crypto.compute_mac(MacAlg.HMAC_SHA_1_160, x["tpk"], d)),
        x["ticket_rand"],
        EncrAlg.AES_CM_128,
        MacAlg.NULL,
    )
    assert port == k5
    assert CONST_MPKI != CONST_MPKR


def test_key_derivation_constants_are_chunks_of_e() -> None:
    from decimal import Decimal, getcontext

    from firmware.mikey import constants as c

    getcontext().prec = 120
    e, term = Decimal(1), Decimal(1)
    for n in range(1, 80):
        term /= n
        e += term
    digits = str(e)[2:]
    chunks = [int(digits[i * 9 : i * 9 + 9]) for i in range(11)]
    assert set(chunks) == {c.CONST_TEK, c.CONST_TGK_AUTH, c.CONST_TGK_ENCR, c.CONST_TGK_SALT,
                      c.CONST_ENCR, c.CONST_AUTH, c.CONST_SALT, c.CONST_MPKI, c.CONST_TGK_FORKED,
                      c.CONST_MPKR_FORKED, c.CONST_MPKR}  # fmt: skip
    assert chunks[0] == c.CONST_TEK and chunks[10] == c.CONST_MPKR
