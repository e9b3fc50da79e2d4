"""Strength rules (issue 11 items 6 and 11): RAND lengths (RFC 3830 6.11, RFC 6043 12.1) and
algorithm strength (RFC 6043 12.1) in the KMS building blocks and the UE roles, and a
TRANSFER_RESP that must repeat its TRANSFER_INIT's PRF (4.2.2.3)."""

from __future__ import annotations

import dataclasses

import pytest

from firmware.mikey import codec as c
from firmware.mikey.constants import (
    EncrAlg,
    ErrNo,
    KeyDataType,
    MacAlg,
    PrfFunc,
    RandRole,
)
from firmware.mikey.crypto import check_strength
from firmware.mikey.errors import MikeyError
from firmware.mikey.exchange import Initiator, Responder
from firmware.mikey.kms import build_request_resp, build_resolve_resp, check_rand_strength
from firmware.mikey.message import Message, decode, encode
from firmware.mikey.ticket import open_ticket, seal_ticket
from firmware.mikey.transfer import verify_transfer_resp

from .corpus import ALICE, BOB, FORKING, KMS_ID, PLAIN, PSK_A, PSK_B, WITH_RANDRR, policy, run
from .kms_double import ntp_t

TPK = bytes(range(0x10, 0x20))


# --- item 6: RAND strength -----------------------------------------------------------------------


def test_the_kms_refuses_rands_shorter_than_the_psk_or_than_16_bytes() -> None:
    """RFC 6043 12.1: 'the sum of the lengths of RANDRi and RANDRr MUST at least be equal to the
    size of the longest pre-shared key/envelope key/MPK/TGK/GTGK'; RFC 3830 6.11: 'RAND len ...
    It SHOULD be at least 16.'  No ERR names this: Unspecified, at the RAND."""
    r = run(PLAIN)
    req, resolve = decode(r.request_init), decode(r.resolve_init)
    for msg in (req, resolve):
        check_rand_strength(msg, len(PSK_A))
        at = next(msg.offsets[i] for i, p in enumerate(msg.payloads) if isinstance(p, c.RoleRand))
        with pytest.raises(MikeyError, match="shorter than the 32-byte key") as exc:
            check_rand_strength(msg, 32)  # a 32-byte PSK behind a 16-byte RAND
        assert (exc.value.err, exc.value.offset) == (ErrNo.UNSPECIFIED, at)
    short = Message(req.header, tuple(
        c.RoleRand(RandRole.RANDRi, b"r" * 15) if isinstance(p, c.RoleRand) else p
        for p in req.payloads))  # fmt: skip
    with pytest.raises(MikeyError, match="shorter than 16 bytes") as exc:
        check_rand_strength(short, 8)
    assert exc.value.offset == -1  # not a received message: no offset
    bare = decode(encode(Message(req.header, tuple(p for p in req.payloads
                                                   if not isinstance(p, c.RoleRand)))))  # fmt: skip
    with pytest.raises(MikeyError, match="no RAND"):
        check_rand_strength(bare, 16)


def test_transfer_rands_add_up_with_the_responders_randrr() -> None:
    """RFC 6043 12.1: RANDRi and RANDRr together against the MPK / TGK (G flag)."""
    r = run(WITH_RANDRR)
    init, resp = decode(r.transfer_init), decode(r.transfer_resp)
    check_rand_strength(resp, 32, initial=init, g_flag=True)  # 16 + 16
    with pytest.raises(MikeyError):
        check_rand_strength(resp, 32, initial=init)  # without G only RANDRi counts


def test_the_ue_roles_never_send_a_rand_shorter_than_16_bytes() -> None:
    """RFC 3830 6.11: 'RAND len (8 bits): length of the RAND (in bytes).  It SHOULD be at least
    16.'"""
    i = Initiator(ALICE, PSK_A, KMS_ID)
    with pytest.raises(MikeyError, match="RANDRi shorter than 16"):
        i.request_init(csb_id=1, t=ntp_t(0), rand_i=b"r" * 15, policy=policy(PLAIN))
    r = run(WITH_RANDRR)
    with pytest.raises(MikeyError, match="RANDRi shorter than 16"):
        r.initiator.transfer_init(csb_id=1, t=ntp_t(4), rand_i=b"r" * 8, sessions=[],
                                  responder=BOB)  # fmt: skip
    with pytest.raises(MikeyError, match="RANDRr shorter than 16"):
        r.responder.transfer_resp(t=ntp_t(6), rand_r=b"r" * 15)
    bob = Responder(BOB, PSK_B, KMS_ID)
    bob.receive_transfer_init(r.transfer_init)
    with pytest.raises(MikeyError, match="RANDRr shorter than 16"):
        bob.resolve_init(csb_id=1, t=ntp_t(5), rand_r=b"")


def test_the_ticket_rand_and_randrkms_are_as_long_as_the_keys_they_protect() -> None:
    """RFC 6043 12.1: 'RANDRkms MUST at least be as long as the longest MPKr/TGK, and the RAND in
    the MIKEY base ticket MUST at least be as long as the longest of TPK and MPK.'"""
    args = {"tpk": TPK, "thdr_data": b"v", "t": ntp_t(1), "mpk": b"M" * 32}
    with pytest.raises(MikeyError, match="ticket RAND MUST"):
        seal_ticket(policy(PLAIN, PrfFunc.PRF_HMAC_SHA_256), rand=b"R" * 16, **args)  # type: ignore[arg-type]
    with pytest.raises(MikeyError, match="ticket RAND MUST"):
        seal_ticket(policy(PLAIN), tpk=b"T" * 24, thdr_data=b"v", t=ntp_t(1), rand=b"R" * 16,
                    mpk=b"M" * 16)  # fmt: skip
    r = run(FORKING)
    req = decode(r.resolve_init)
    opened = open_ticket(req.ticket_bytes(), r.kms._tpk_port)
    with pytest.raises(MikeyError, match="RANDRkms MUST"):
        build_resolve_resp(req, PSK_B, t=ntp_t(3), opened=opened, responder_identity=BOB,
                           rand_kms=b"k" * 15)  # fmt: skip


# --- item 11: algorithm strength -----------------------------------------------------------------


def test_builders_given_prf_hmac_sha_256_produce_256_bit_macs_and_keys() -> None:
    """RFC 6043 12.1: 'The new algorithms PRF-HMAC-SHA-256, AES-CM-256, and HMAC-SHA-256-256 use
    256-bit keys ... The 256-bit algorithms SHOULD be used together, and they SHALL NOT be mixed
    with algorithms using key sizes less than 256 bits.'  A PRF-HMAC-SHA-256 request is answered
    with an AES-CM-256 KEMAC and an HMAC-SHA-256-256 V, whatever V it came with."""
    r = run(FORKING, prf=PrfFunc.PRF_HMAC_SHA_256, key_len=32, rand_len=32)
    for raw in (r.request_resp, r.resolve_resp, r.transfer_init, r.transfer_resp):
        msg = decode(raw)
        v = msg.payloads[-1]
        assert isinstance(v, c.Verification) and v.mac_alg is MacAlg.HMAC_SHA_256_256
        assert len(v.mac) == 32
        kemac = msg.find(c.Kemac)
        assert kemac is None or kemac.encr_alg is EncrAlg.AES_CM_256
    opened = open_ticket(decode(r.transfer_init).ticket_bytes(), r.kms._tpk_port)
    assert len(opened.mpki) == len(opened.mpkr) == 32
    assert all(len(k.key) == 32 for k in opened.session_keys)
    req = decode(r.request_init)
    ticket = decode(r.request_resp).require(c.Ticket)
    args = {"t": ntp_t(2), "ticket": ticket, "mpki": opened.mpki, "mpkr": None,
            "session_keys": opened.session_keys}  # fmt: skip
    for kw, err in (({"mac_alg": MacAlg.HMAC_SHA_1_160}, ErrNo.INVALID_MAC),
                    ({"encr_alg": EncrAlg.AES_CM_128}, ErrNo.INVALID_EA),
                    ({"encr_alg": EncrAlg.AES_KW_128}, ErrNo.INVALID_EA)):  # fmt: skip
        with pytest.raises(MikeyError) as exc:
            build_request_resp(req, PSK_A, **args, **kw)  # type: ignore[arg-type]
        assert exc.value.err is err


def test_keys_longer_than_128_bits_never_go_under_128_bit_encryption() -> None:
    """RFC 6043 12.1: 'If session keys (TEK/TGK/GTGK) longer than 128 bits are used, 128-bit
    algorithms SHALL NOT be used.'; 'All keys ... MUST have adequate strength/length, i.e., 128
    bits or more.'"""
    with pytest.raises(MikeyError, match="longer than 128 bits") as exc:
        check_strength(PrfFunc.MIKEY_1, encr_alg=EncrAlg.AES_CM_128, key_lengths=(16, 32))
    assert exc.value.err is ErrNo.INVALID_EA
    with pytest.raises(MikeyError, match="128 bits or more"):
        check_strength(PrfFunc.PRF_HMAC_SHA_256, key_lengths=(8,))
    with pytest.raises(MikeyError, match="longer than 128 bits"):
        long_tgk = c.KeyData(KeyDataType.TGK, b"G" * 32)
        seal_ticket(policy(PLAIN), tpk=TPK, thdr_data=b"v", t=ntp_t(1), rand=b"R" * 16,
                    mpk=b"M" * 16, session_keys=[long_tgk])  # fmt: skip
    check_strength(PrfFunc.MIKEY_1, encr_alg=EncrAlg.NULL, mac_alg=MacAlg.NULL, key_lengths=(32,))


def test_ue_roles_refuse_a_mac_weaker_or_stronger_than_their_prf() -> None:
    """RFC 6043 12.1: '... they SHALL NOT be mixed with algorithms using key sizes less than 256
    bits.'  The V MAC follows the PRF unless told otherwise."""
    assert Initiator(ALICE, PSK_A, KMS_ID, prf_func=PrfFunc.PRF_HMAC_SHA_256).mac_alg is (
        MacAlg.HMAC_SHA_256_256
    )
    for prf, mac in ((PrfFunc.PRF_HMAC_SHA_256, MacAlg.HMAC_SHA_1_160),
                     (PrfFunc.MIKEY_1, MacAlg.HMAC_SHA_256_256)):  # fmt: skip
        with pytest.raises(MikeyError) as exc:
            Responder(BOB, PSK_B, KMS_ID, prf_func=prf, mac_alg=mac)
        assert exc.value.err is ErrNo.INVALID_MAC


def test_refuses_a_transfer_resp_whose_prf_differs_from_the_transfer_inits() -> None:
    """RFC 6043 4.2.2.3: 'The version, PRF func and CSB ID fields in the HDR payload SHALL be
    identical to the corresponding fields in the TRANSFER_INIT message.'"""
    r = run(PLAIN)
    init, resp = decode(r.transfer_init), decode(r.transfer_resp)
    other = decode(encode(Message(dataclasses.replace(resp.header,
                                                      prf_func=PrfFunc.PRF_HMAC_SHA_256),
                                  resp.payloads)))  # fmt: skip
    with pytest.raises(MikeyError, match="PRF func differs") as exc:
        verify_transfer_resp(other, init, r.responder.mpki)
    assert (exc.value.err, exc.value.offset) == (ErrNo.INVALID_PRF, 3)
