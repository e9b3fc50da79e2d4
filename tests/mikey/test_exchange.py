"""Full MIKEY-TICKET exchanges against the in-test KMS double, and the KMS building blocks'
refusals (each named after what it stops)."""

from __future__ import annotations

import dataclasses

import pytest

from firmware.mikey import codec as c
from firmware.mikey.constants import DataType, EncrAlg, ErrNo, IdRole, MacAlg, PrfFunc, TsType
from firmware.mikey.errors import MikeyError
from firmware.mikey.kms import build_error, verify_error, verify_initial_psk, verify_initiator_data
from firmware.mikey.message import decode, encode
from firmware.mikey.sdp import add_key_mgmt, find_key_mgmt, key_mgmt_line
from firmware.mikey.ticket import (
    check_policy,
    ntp_bytes,
    ntp_seconds,
    open_ticket,
    peek_ticket,
    within_validity,
)
from firmware.mikey.transfer import (
    check_vi,
    forked_mpkr_for,
    verify_transfer_init,
    verify_transfer_resp,
)

from .corpus import ALICE, BOB, FORKING, KMS_ID, PLAIN, PSK_A, WITH_RANDRR, run
from .kms_double import ntp_t


@pytest.mark.parametrize("flags", [FORKING, PLAIN, WITH_RANDRR], ids=["forking", "plain", "G"])
@pytest.mark.parametrize("prf", list(PrfFunc))
def test_initiator_and_responder_derive_the_same_tek_and_salt_per_crypto_session(
    flags: c.TpFlags, prf: PrfFunc
) -> None:
    r = run(flags, sessions=3, prf=prf)
    assert [k.cs_id for k in r.initiator_keys] == [1, 2, 3]
    assert r.initiator_keys == r.responder_keys
    assert len({k.tek for k in r.initiator_keys}) == 3
    assert all(len(k.tek) == 16 and len(k.salt) == 14 for k in r.initiator_keys)


def test_forking_gives_different_keys_than_the_unforked_ticket() -> None:
    forked, plain = run(FORKING), run(PLAIN)
    assert forked.initiator_keys != plain.initiator_keys


def test_kms_xk_view_derives_the_same_keys_from_transfer_messages() -> None:
    """What the node's Xk release does: open ticket, verify INIT and RESP, derive keys."""
    from firmware.mikey.transfer import fork_keys, fork_modifier, session_keys

    r = run(FORKING)
    init, resp = decode(r.transfer_init), decode(r.transfer_resp)
    opened = open_ticket(init.ticket_bytes(), r.kms._tpk_port)
    verify_transfer_init(init, opened.mpki)
    verify_initiator_data(init, opened.mpkr)
    check_vi(init)
    verify_transfer_resp(resp, init, forked_mpkr_for(resp, opened.policy, opened.mpkr))
    keys = fork_keys(opened.policy, opened.session_keys, *fork_modifier(resp))
    assert session_keys(init, keys, resp=resp) == r.initiator_keys
    assert opened.idr_i == ALICE and opened.idr_r == (BOB,) and opened.idr_kms == KMS_ID
    assert opened.thdr_data == b"\x00\x01"


def test_refuses_transfer_init_whose_mac_was_made_with_another_mpk() -> None:
    r = run(PLAIN)
    init = decode(r.transfer_init)
    with pytest.raises(MikeyError) as exc:
        verify_transfer_init(init, bytes(16))
    assert exc.value.err is ErrNo.AUTH_FAILURE


def test_refuses_transfer_init_with_a_substituted_responder_identity() -> None:
    r = run(PLAIN)
    good = decode(r.transfer_init)
    opened = open_ticket(good.ticket_bytes(), r.kms._tpk_port)
    payloads = tuple(
        c.RoleIdentity(IdRole.IDRr, p.id_type, b"sip:eve@example.com")
        if isinstance(p, c.RoleIdentity) and p.role == IdRole.IDRr
        else p
        for p in good.payloads
    )
    with pytest.raises(MikeyError):
        verify_transfer_init(decode(encode(good.__class__(good.header, payloads))), opened.mpki)


def test_initiator_data_is_outside_the_transfer_init_mac_but_vr_catches_tampering() -> None:
    r = run(FORKING)
    init = decode(r.transfer_init)
    ticket = init.require(c.Ticket)
    assert ticket.initiator_data is not None
    vi, vr = ticket.initiator_data
    assert isinstance(vr, c.Verification)
    bad_vr = c.Verification(vr.mac_alg, bytes(len(vr.mac)))
    payloads = tuple(
        dataclasses.replace(p, initiator_data=(vi, bad_vr)) if isinstance(p, c.Ticket) else p
        for p in init.payloads
    )
    tampered = decode(encode(init.__class__(init.header, payloads)))
    opened = open_ticket(tampered.ticket_bytes(), r.kms._tpk_port)
    verify_transfer_init(tampered, opened.mpki)  # Initiator Data is not covered
    with pytest.raises(MikeyError):
        verify_initiator_data(tampered, opened.mpkr)


def test_refuses_ticket_whose_policy_was_edited_after_sealing() -> None:
    r = run(PLAIN)
    init = decode(r.transfer_init)
    raw = init.ticket_bytes().replace(BOB, b"sip:eve@example.com")
    with pytest.raises(MikeyError) as exc:
        open_ticket(raw, r.kms._tpk_port)
    assert exc.value.err is ErrNo.AUTH_FAILURE


def test_refuses_ticket_under_a_different_tpk_and_unsupported_ticket_types() -> None:
    r = run(PLAIN)
    raw = decode(r.transfer_init).ticket_bytes()
    with pytest.raises(MikeyError):
        open_ticket(raw, bytes(16))
    wrong_type = raw[:1] + b"\x00\x02" + raw[3:]
    with pytest.raises(MikeyError) as exc:
        peek_ticket(wrong_type)
    assert exc.value.err is ErrNo.INVALID_TICKET
    policy, td = peek_ticket(raw)
    assert td.thdr.data == b"\x00\x01" and policy.flags == PLAIN


def test_refuses_request_init_under_a_wrong_psk_or_wrong_kms_identity() -> None:
    r = run(PLAIN)
    req = decode(r.request_init)
    verify_initial_psk(req, PSK_A, kms_identity=None)
    with pytest.raises(MikeyError):
        verify_initial_psk(req, bytes(16), kms_identity=None)
    stripped = decode(
        encode(
            req.__class__(
                req.header,
                tuple(
                    p
                    for p in req.payloads
                    if not (isinstance(p, c.RoleIdentity) and p.role == IdRole.IDRkms)
                ),
            )
        )
    )
    with pytest.raises(MikeyError):  # MAC was made with the identity appended, now absent
        verify_initial_psk(stripped, PSK_A, kms_identity=b"other-kms")
    with pytest.raises(MikeyError, match="not a PSK initial"):
        verify_initial_psk(decode(r.request_resp), PSK_A, kms_identity=KMS_ID)


def test_refuses_transfer_resp_replayed_against_another_transfer_init() -> None:
    a, b = run(PLAIN), run(PLAIN, sessions=3)
    init_b = decode(b.transfer_init)
    resp_a = decode(a.transfer_resp)
    opened = open_ticket(init_b.ticket_bytes(), b.kms._tpk_port)
    with pytest.raises(MikeyError):
        verify_transfer_resp(resp_a, init_b, opened.mpki)


def test_error_message_is_authenticated_with_the_failed_messages_auth_key() -> None:
    r = run(PLAIN)
    req = decode(r.request_init)
    key = verify_initial_psk(req, PSK_A, kms_identity=KMS_ID)
    err = decode(build_error(req.header, [ErrNo.INVALID_TS], t=ntp_t(9), auth_key=key))
    assert err.header.data_type is DataType.ERROR and not err.header.v_flag
    assert err.header.csb_id == req.header.csb_id
    assert err.require(c.ErrorPayload).err_no is ErrNo.INVALID_TS
    verify_error(err, key)
    with pytest.raises(MikeyError):
        verify_error(err, bytes(20))
    with pytest.raises(MikeyError):
        build_error(req.header, [], t=ntp_t(9))


@pytest.mark.parametrize(
    "flags",
    [
        c.TpFlags.H,  # not D without L
        c.TpFlags.D | c.TpFlags.G | c.TpFlags.H,  # G without F
        c.TpFlags.D,  # neither G nor H
        c.TpFlags.D | c.TpFlags.H | c.TpFlags.I,  # I without E
        c.TpFlags.L | c.TpFlags.H | c.TpFlags.K,  # K without D
        c.TpFlags.D | c.TpFlags.H | c.TpFlags.M,  # M without F
    ],
)
def test_ticket_policy_flag_consistency_rules(flags: c.TpFlags) -> None:
    with pytest.raises(MikeyError) as exc:
        check_policy(flags)
    assert exc.value.err is ErrNo.INVALID_TPPAR


def test_forking_with_a_tgk_requires_f() -> None:
    flags = c.TpFlags.D | c.TpFlags.E | c.TpFlags.H | c.TpFlags.I
    check_policy(flags)
    with pytest.raises(MikeyError):
        check_policy(flags, has_tgk=True)


def test_validity_window_uses_the_ntp_era_rule() -> None:
    policy = c.TicketPolicy(1, 1, 1, PrfFunc.MIKEY_1, PLAIN, (
        c.RoleTimestamp(c.TsRole.TRs, TsType.NTP_UTC_32, ntp_bytes(0xF000_0000, TsType.NTP_UTC_32)),
        c.RoleTimestamp(c.TsRole.TRe, TsType.NTP_UTC, ntp_bytes((1 << 32) + 100)),
    ))  # fmt: skip
    assert within_validity(policy, 0xF000_0001)
    assert within_validity(policy, (1 << 32) + 50)  # after the 2036 wrap
    assert not within_validity(policy, 0xEFFF_FFFF)
    assert not within_validity(policy, (1 << 32) + 101)
    assert ntp_seconds(TsType.NTP_UTC, ntp_bytes(5)) == (1 << 32) + 5
    with pytest.raises(MikeyError):
        ntp_seconds(TsType.COUNTER, bytes(4))


def test_sdp_key_mgmt_lines_round_trip_and_bad_base64_is_refused() -> None:
    r = run(PLAIN)
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n"
    out = add_key_mgmt(sdp, r.transfer_init)
    assert find_key_mgmt(out) == [r.transfer_init]
    assert find_key_mgmt(add_key_mgmt(out, r.transfer_resp)) == [r.transfer_resp]
    assert out.index("a=key-mgmt") < out.index("m=audio")
    assert key_mgmt_line(b"\x01").startswith("a=key-mgmt:mikey AQ")
    assert find_key_mgmt("a=key-mgmt:other abc\r\na=rtpmap:0 PCMU/8000") == []
    with pytest.raises(MikeyError):
        find_key_mgmt("a=key-mgmt:mikey !!!")


def test_aes_kw_and_aes_cm_256_kemacs_round_trip() -> None:
    from firmware.mikey import crypto

    for alg in (EncrAlg.AES_KW_128, EncrAlg.AES_CM_256, EncrAlg.AES_CM_128, EncrAlg.NULL):
        keys = crypto.message_keys(PrfFunc.PRF_HMAC_SHA_256, bytes(32), 7, response=True,
                                   rand_i=b"r" * 16, rand_r=None, encr_alg=alg,
                                   mac_alg=MacAlg.HMAC_SHA_256_256)  # fmt: skip
        assert len(keys.encr_key) == alg.key_len and len(keys.auth_key) == 32
        plain = bytes(range(24))
        enc = crypto.kemac_crypt(alg, keys, 7, bytes(8), plain, decrypt=False)
        assert crypto.kemac_crypt(alg, keys, 7, bytes(8), enc, decrypt=True) == plain
