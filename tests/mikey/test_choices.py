"""The two readings the RFCs leave open that issue 11 item 12 names (spec mikey-ticket.md 12): Q4,
which T feeds the AES-CM IV of a response's KEMAC (kept: the T of the message carrying it), and
Q6, what stands for an identity an initial message omits under its MAC (kept: what the verifier
knows, else nothing; the other reading - the ticket's identity - is accepted too)."""

from __future__ import annotations

import pytest

from firmware.mikey import codec as c
from firmware.mikey.constants import DataType, ErrNo, IdRole, IdType, MacAlg, PrfFunc, RandRole
from firmware.mikey.crypto import compute_mac, kemac_crypt, message_keys, mpk_split
from firmware.mikey.errors import MikeyError
from firmware.mikey.kms import verify_initial_psk
from firmware.mikey.message import (
    ABSENT_IDENTITY,
    ABSENT_IDENTITY_ACCEPTED,
    KEMAC_IV_T,
    MAX_IDENTITY_CANDIDATES,
    AbsentIdentity,
    KemacIvT,
    Message,
    coverage,
    decode,
    encode,
    kemac_iv_t,
    mac_input,
)
from firmware.mikey.ticket import open_ticket, seal_ticket, ticket_raw
from firmware.mikey.transfer import open_kemac, verify_transfer_init

from .corpus import ALICE, BOB, KMS_ID, PLAIN, PSK_A, PSK_B, policy, run
from .kms_double import ntp_t

TPK = bytes(range(0x10, 0x20))
RAND = b"\x5a" * 16


def _signed(header: c.Header, body: list[c.Payload], inkey: bytes, rand_role: RandRole,
            appended: bytes) -> bytes:  # fmt: skip
    """An initial message whose MAC covers the message || ``appended`` (K1 from ``inkey``)."""
    rand_i, rand_r = (RAND, None) if rand_role == RandRole.RANDRi else (None, RAND)
    key = message_keys(header.prf_func, inkey, header.csb_id, response=False, rand_i=rand_i,
                       rand_r=rand_r).auth_key  # fmt: skip
    draft = decode(encode(Message(header, (*body, c.Verification(MacAlg.HMAC_SHA_1_160,
                                                                 bytes(20))))))  # fmt: skip
    mac = compute_mac(MacAlg.HMAC_SHA_1_160, key, mac_input(draft, appended))
    return encode(Message(header, (*body, c.Verification(MacAlg.HMAC_SHA_1_160, mac))))


def test_q4_and_q6_are_named_constants_of_todays_reading() -> None:
    assert KEMAC_IV_T is KemacIvT.CARRYING_MESSAGE
    assert ABSENT_IDENTITY is AbsentIdentity.KNOWN_OR_NOTHING
    assert ABSENT_IDENTITY_ACCEPTED == (AbsentIdentity.KNOWN_OR_NOTHING, AbsentIdentity.FROM_POLICY)


def test_q4_a_responses_kemac_iv_takes_the_t_of_the_response_not_of_the_request() -> None:
    """RFC 3830 4.2.3: 'IV = (S XOR (0x0000 || CSB ID || T)) || 0x0000, ... and where T is the
    64-bit timestamp sent by the Initiator'; RFC 6043 4.2.1.5: 'the KMS SHALL generate a fresh
    timestamp value (unlike [RFC3830])'.  Read as the T of the message carrying the KEMAC; the
    other reading (the request's T) does not decrypt what the KMS sends."""
    r = run(PLAIN)
    req, resp = decode(r.request_init), decode(r.request_resp)
    assert resp.timestamp != req.timestamp  # a fresh T
    assert kemac_iv_t(resp, req) == resp.timestamp.as_64()
    assert kemac_iv_t(resp, req, KemacIvT.INITIAL_MESSAGE) == req.timestamp.as_64()
    good = open_kemac(resp, PSK_A, req)
    kemac = resp.require(c.Kemac)
    keys = message_keys(resp.header.prf_func, PSK_A, resp.header.csb_id, response=True,
                        rand_i=req.randr(RandRole.RANDRi), rand_r=None,
                        encr_alg=kemac.encr_alg, mac_alg=MacAlg.NULL)  # fmt: skip
    other = kemac_crypt(kemac.encr_alg, keys, resp.header.csb_id,
                        kemac_iv_t(resp, req, KemacIvT.INITIAL_MESSAGE), kemac.encr_data,
                        decrypt=True)  # fmt: skip
    assert other != c.serialize_key_data(good)


def _transfer_init_without_idrr(appended: bytes, ticket: c.Ticket, mpki: bytes) -> Message:
    header = c.Header(DataType.TRANSFER_INIT, 0x0A0B0C0D, c.GenericIdMap(
        (c.GenericIdEntry.srtp(1, 5),)), PrfFunc.MIKEY_1, False)  # fmt: skip
    body: list[c.Payload] = [ntp_t(4), c.RoleRand(RandRole.RANDRi, RAND),
                             c.RoleIdentity(IdRole.IDRi, IdType.URI, ALICE), ticket]  # fmt: skip
    return decode(_signed(header, body, mpki, RandRole.RANDRi, appended))


def test_q6_an_omitted_idrr_stands_for_nothing_or_for_the_tickets_responder() -> None:
    """RFC 6043 5.5: 'For initial messages, the identities (not whole payloads) of the parties
    involved MUST directly follow the MIKEY message in the Verification MAC/Signature
    calculation'; 4.2.2.1: 'IDRr MAY be left out when it can be expected that the Responder has a
    single identity'; 6.10: 'IDRr is the identity of a responder ... authorized to resolve the
    ticket.'  Both readings verify; any other identity does not."""
    r = run(PLAIN)
    ticket = decode(r.transfer_init).require(c.Ticket)
    mpki = r.initiator.mpki
    for appended in (ALICE, ALICE + BOB):  # today's reading, then the ticket's IDRr
        verify_transfer_init(_transfer_init_without_idrr(appended, ticket, mpki), mpki)
    carol = b"sip:carol@example.com"
    verify_transfer_init(_transfer_init_without_idrr(ALICE + carol, ticket, mpki), mpki,
                         responder=carol)  # what the verifier knows  # fmt: skip
    with pytest.raises(MikeyError) as exc:
        verify_transfer_init(_transfer_init_without_idrr(ALICE + carol, ticket, mpki), mpki)
    assert exc.value.err is ErrNo.AUTH_FAILURE


def test_q6_the_other_reading_tries_a_bounded_number_of_ticket_identities() -> None:
    """A ticket naming many responders: each is a candidate Identity_r, at most
    MAX_IDENTITY_CANDIDATES of them (one HMAC each)."""
    many = tuple(c.RoleIdentity(IdRole.IDRr, IdType.URI, b"sip:r%d@example.com" % n)
                 for n in range(MAX_IDENTITY_CANDIDATES + 4))  # fmt: skip
    pol = c.TicketPolicy(1, 1, 1, PrfFunc.MIKEY_1, PLAIN, (
        c.RoleIdentity(IdRole.IDRi, IdType.URI, ALICE), *many))  # fmt: skip
    mpk = b"M" * 16
    ticket = seal_ticket(pol, tpk=TPK, thdr_data=b"v", t=ntp_t(1), rand=RAND, mpk=mpk)
    mpki, _ = mpk_split(PrfFunc.MIKEY_1, mpk, RAND)
    assert open_ticket(ticket_raw(ticket), TPK).idr_r == tuple(i.data for i in many)
    verify_transfer_init(_transfer_init_without_idrr(ALICE + many[1].data, ticket, mpki), mpki)
    late = _transfer_init_without_idrr(ALICE + many[-1].data, ticket, mpki)
    with pytest.raises(MikeyError):
        verify_transfer_init(late, mpki)


def test_q6_omitted_idrkms_and_idri_stand_for_the_ticket_or_requested_policy() -> None:
    """RFC 6043 4.2.1.1: 'IDRkms ... MAY be left out when it can be expected that the KMS has a
    single identity'; 4.2.1.2: IDRi 'MAY be left out when it can be expected that the KMS can
    identify the Initiator by other means'; 6.10: 'IDRkms contains the identity of a KMS that
    can resolve the ticket', 'IDRi contains the identity of the peer that requested or created
    the ticket' - so the policy's identities are the other reading of what was appended."""
    r = run(PLAIN)
    ticket = decode(r.transfer_init).require(c.Ticket)
    header = c.Header(DataType.RESOLVE_INIT_PSK, 9, c.EmptyMap(), PrfFunc.MIKEY_1, True)
    body: list[c.Payload] = [ntp_t(5), c.RoleRand(RandRole.RANDRr, RAND),
                             c.RoleIdentity(IdRole.IDRr, IdType.URI, BOB), ticket]  # fmt: skip
    resolve = decode(_signed(header, body, PSK_B, RandRole.RANDRr, BOB + KMS_ID))
    verify_initial_psk(resolve, PSK_B, kms_identity=None)  # the ticket's IDRkms
    header = c.Header(DataType.REQUEST_INIT_PSK, 9, c.EmptyMap(), PrfFunc.MIKEY_1, True)
    body = [ntp_t(0), c.RoleRand(RandRole.RANDRi, RAND), policy(PLAIN)]
    request = decode(_signed(header, body, PSK_A, RandRole.RANDRi, ALICE + KMS_ID))
    verify_initial_psk(request, PSK_A, kms_identity=None)  # the requested policy's IDRi, IDRkms
    with pytest.raises(MikeyError):
        verify_initial_psk(request, PSK_B, kms_identity=None)


def test_the_coverage_of_an_initial_message_appends_todays_reading() -> None:
    """RFC 6043 Table 5.2: 'REQUEST_INIT | REQUEST_INIT || Identity_i || Identity_kms'."""
    header = c.Header(DataType.REQUEST_INIT_PSK, 9, c.EmptyMap(), PrfFunc.MIKEY_1, True)
    body: list[c.Payload] = [ntp_t(0), c.RoleRand(RandRole.RANDRi, RAND), policy(PLAIN)]
    request = decode(_signed(header, body, PSK_A, RandRole.RANDRi, b""))
    assert coverage(request, initiator=ALICE, kms=KMS_ID) == mac_input(request, ALICE + KMS_ID)
    assert coverage(request) == mac_input(request)  # nothing known, nothing sent: no bytes
