"""Open registries (issue 11 item 5): values that do not change a payload's layout parse, so a
payload naming a role, type or error we do not know can be ignored or refused at the semantic
level; the data type stays closed and answers ERR 13."""

from __future__ import annotations

import pytest

from firmware.mikey import codec as c
from firmware.mikey.constants import (
    DataType,
    ErrNo,
    IdRole,
    IdType,
    MacAlg,
    PrfFunc,
    RandRole,
    TsRole,
    TsType,
)
from firmware.mikey.crypto import message_keys
from firmware.mikey.errors import MikeyError
from firmware.mikey.kms import build_error, sign_message, verify_initial_psk
from firmware.mikey.message import Message, decode, encode
from firmware.mikey.transfer import verify_v

from .corpus import ALICE, KMS_ID, PLAIN, PSK_A, policy
from .kms_double import KmsDouble, ntp_t

RAND_I = bytes(range(0x40, 0x50))
CSB = 0x0BADCAFE


def _request_with_unregistered_values() -> bytes:
    """A REQUEST_INIT_PSK as a UE that knows more registries than we do would send it: IDRkmsi
    and IDRkmsr (RFC 6509), a private-range IDR with an unassigned ID Type, a private-range RANDR
    and, in the TP Data, a private-range TR; signed like any REQUEST_INIT_PSK (K1 from the PSK,
    MAC over the message || Identity_i || Identity_kms)."""
    pol = policy(PLAIN)
    tp = c.TicketPolicy(pol.ticket_type, pol.subtype, pol.version, pol.prf_func, pol.flags, (
        *(pol.payloads or ()),
        c.RoleTimestamp(245, TsType.NTP_UTC, ntp_t(7).value),
        c.RoleIdentity(IdRole.IDRkmsr, IdType.URI, b"sip:kms.peer.example"),
    ))  # fmt: skip
    payloads: list[c.Payload] = [
        ntp_t(0),
        c.RoleRand(RandRole.RANDRi, RAND_I),
        c.RoleRand(240, b"private-use rand"),
        c.RoleIdentity(IdRole.IDRi, IdType.URI, ALICE),
        c.RoleIdentity(IdRole.IDRkms, IdType.URI, KMS_ID),
        c.RoleIdentity(IdRole.IDRkmsi, IdType.URI, b"sip:kms.home.example"),
        c.RoleIdentity(241, 9, b"\x01\x02private"),
        tp,
    ]
    header = c.Header(DataType.REQUEST_INIT_PSK, CSB, c.EmptyMap(), PrfFunc.MIKEY_1, True)
    key = message_keys(PrfFunc.MIKEY_1, PSK_A, CSB, response=False, rand_i=RAND_I,
                       rand_r=None).auth_key  # fmt: skip
    return sign_message(header, payloads, key, MacAlg.HMAC_SHA_1_160, ALICE + KMS_ID)


def test_unregistered_id_rand_and_ts_roles_parse_and_the_kms_ignores_those_payloads() -> None:
    """RFC 6043 14: for the ID Role, RAND Role and TS Role name spaces 'values in the range 240-254
    are Reserved for Private Use'; RFC 6509 4.4 adds 'Initiator's KMS (IDRkmsi) | 6' and
    'Responder's KMS (IDRkmsr) | 7'; RFC 6043 4.2.1.4: 'Unexpected payloads in the REQUEST_INIT
    message SHOULD be ignored.'"""
    raw = _request_with_unregistered_values()
    req = decode(raw)
    assert encode(req) == raw
    idrs = req.find_all(c.RoleIdentity)
    assert [i.role for i in idrs] == [IdRole.IDRi, IdRole.IDRkms, IdRole.IDRkmsi, 241]
    assert type(idrs[2].role) is IdRole and type(idrs[3].role) is int and idrs[3].id_type == 9
    rands = req.find_all(c.RoleRand)
    assert [r.role for r in rands] == [RandRole.RANDRi, 240] and type(rands[1].role) is int
    tp = req.require(c.TicketPolicy)
    assert tp.tr(245) is not None and tp.tr(TsRole.TRs) is None
    assert [i.role for i in tp.idr(IdRole.IDRkmsr)] == [IdRole.IDRkmsr]
    # semantics: the KMS authenticates and answers; the unknown payloads play no part
    verify_initial_psk(req, PSK_A, kms_identity=KMS_ID)
    kms = KmsDouble(KMS_ID, {ALICE: PSK_A})
    resp = decode(kms.handle_request(raw, policy(PLAIN)))
    verify_v(resp, PSK_A, initial=req)
    assert req.randr(RandRole.RANDRi) == RAND_I


def test_unregistered_error_numbers_parse_and_err_13_is_registered() -> None:
    """RFC 3830 6.12 / RFC 6043 6.9: the Error no name space grows (RFC 4738 6 added 13
    'Unsupported message type'); an Error message naming a number we do not know still parses."""
    failed = c.Header(DataType.REQUEST_INIT_PSK, CSB)
    raw = build_error(failed, [ErrNo.UNSUPPORTED_MESSAGE_TYPE], t=ntp_t(9))
    msg = decode(raw)
    assert msg.require(c.ErrorPayload).err_no is ErrNo.UNSUPPORTED_MESSAGE_TYPE
    future = Message(msg.header, (*msg.payloads, c.ErrorPayload(200), c.ErrorPayload(250, 7)))
    back = decode(encode(future))
    assert [e.err_no for e in back.find_all(c.ErrorPayload)] == [13, 200, 250]
    assert type(back.find_all(c.ErrorPayload)[1].err_no) is int
    assert back == future


@pytest.mark.parametrize(
    "payload",
    [
        c.RoleIdentity(256, IdType.URI, b"x"),
        c.RoleIdentity(IdRole.IDRi, -1, b"x"),
        c.RoleRand(300, b"r"),
        c.RoleTimestamp(999, TsType.NTP_UTC, bytes(8)),
        c.Identity(256, b"x"),
        c.ErrorPayload(256),
    ],
    ids=["idr-role", "idr-type", "randr-role", "tr-role", "id-type", "err-no"],
)
def test_encoder_refuses_open_registry_values_that_do_not_fit_their_byte(
    payload: c.Payload,
) -> None:
    with pytest.raises(MikeyError, match="does not fit in 8 bits"):
        encode(Message(c.Header(DataType.TRANSFER_INIT, 1), (payload,)))
