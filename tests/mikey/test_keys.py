"""The keys of a MIKEY-TICKET exchange (issue 11 items 1, 2, 3, 9 and 10): an SPI on every key the
KMS issues, the crypto sessions the TRANSFER_RESP answers or adds, key and salt lengths from the
security policy, the Responder's answer per crypto session, and keys the UEs supply themselves.
Every exchange runs the UE roles against the in-test KMS double; the "Xk view" derives the keys
from the transfer messages and the ticket alone, as the node's key release does."""

from __future__ import annotations

import dataclasses

import pytest

from firmware.mikey import codec as c
from firmware.mikey.constants import (
    DataType,
    ErrNo,
    KeyDataType,
    PrfFunc,
    ProtType,
    SrtpParam,
)
from firmware.mikey.errors import MikeyError
from firmware.mikey.exchange import Initiator, Responder, open_kemac
from firmware.mikey.kms import build_request_resp, build_resolve_resp
from firmware.mikey.message import Message, decode, encode
from firmware.mikey.ticket import open_ticket, seal_ticket
from firmware.mikey.transfer import (
    SessionKey,
    crypto_sessions,
    fork_keys,
    fork_modifier,
    forked_mpkr_for,
    policy_lengths,
    session_keys,
)

from .corpus import ALICE, BOB, FORKING, KMS_ID, PLAIN, PSK_A, PSK_B, Run, policy, run
from .kms_double import ntp_t

TPK = bytes(range(0x10, 0x20))
ALLOW_UE_KEYS = c.TpFlags.D | c.TpFlags.E | c.TpFlags.F | c.TpFlags.H | c.TpFlags.L | \
    c.TpFlags.M | c.TpFlags.N | c.TpFlags.O  # fmt: skip


def _sp(no: int, **params: int) -> c.SecurityPolicy:
    prms = (c.PolicyParam(SrtpParam[k.upper()], v.to_bytes(1, "big")) for k, v in params.items())
    return c.SecurityPolicy(no, ProtType.SRTP, tuple(prms))


def _transfer(r: Run, sessions: list[c.GenericIdEntry], *, unnamed: bool = False) -> Responder:
    """A second Ticket Transfer on the ticket of ``r`` offering ``sessions``, resolved by a new
    Responder; ``unnamed`` drops the SPIs the KMS gave the session keys on both sides."""
    if unnamed:
        r.initiator.keys = tuple(dataclasses.replace(k, kv=c.KvNull()) for k in r.initiator.keys)
    ti = r.initiator.transfer_init(csb_id=0x0C0D0E0F, t=ntp_t(10), rand_i=b"\x55" * 16,
                                   sessions=sessions, responder=BOB)  # fmt: skip
    bob = Responder(BOB, PSK_B, KMS_ID)
    bob.receive_transfer_init(ti)
    resolve = bob.resolve_init(csb_id=9, t=ntp_t(11), rand_r=b"\x66" * 16)
    bob.process_resolve_resp(r.kms.handle_resolve(resolve))
    if unnamed:
        bob.keys = tuple(dataclasses.replace(k, kv=c.KvNull()) for k in bob.keys)
    return bob


def xk_view(r: Run, *, with_resp: bool = True) -> list[SessionKey]:
    """What the node's Xk derives: open the ticket (TPK), verify nothing more here, fork with the
    TRANSFER_RESP's modifier, open UE-supplied KEMACs with MPKi / MPKr'."""
    init, resp = decode(r.transfer_init), decode(r.transfer_resp)
    opened = open_ticket(init.ticket_bytes(), r.kms._tpk_port)
    keys, resp_key = opened.session_keys, opened.mpki
    if opened.flags & c.TpFlags.I:
        keys = fork_keys(opened.policy, keys, *fork_modifier(resp))
        resp_key = forked_mpkr_for(resp, opened.policy, opened.mpkr)
    if not with_resp:
        return session_keys(init, keys, mpki=opened.mpki)
    return session_keys(init, keys, resp=resp, mpki=opened.mpki, resp_key=resp_key)


# --- item 1: an SPI on every key -----------------------------------------------------------------


def test_every_key_the_kms_issues_carries_an_spi_and_the_ues_read_them() -> None:
    """RFC 6043 6.2.1: 'An SPI (or MKI) MUST be specified for each key (see Section 6.13 of
    [RFC3830])' - TGK, MPKi and MPKr in REQUEST_RESP, MPKi, MPKr' and TGK' in RESOLVE_RESP, and
    the MPK and TGK the ticket encodes; a forked key keeps the SPI of the key it comes from."""
    r = run(FORKING)
    mpk_spi, tgk_spi = r.kms.spis[0]
    req, rresp = decode(r.request_init), decode(r.request_resp)
    issued = open_kemac(rresp, PSK_A, req)
    expected = [(KeyDataType.MPK, mpk_spi), (KeyDataType.MPK, mpk_spi), (KeyDataType.TGK, tgk_spi)]
    assert [(k.key_type, k.spi) for k in issued] == expected
    resolve, sresp = decode(r.resolve_init), decode(r.resolve_resp)
    resolved = open_kemac(sresp, PSK_B, resolve)
    assert [k.spi for k in resolved] == [mpk_spi, mpk_spi, tgk_spi]
    assert resolved[2].key != issued[2].key  # TGK' under the TGK's SPI
    opened = open_ticket(decode(r.transfer_init).ticket_bytes(), r.kms._tpk_port)
    assert opened.mpk_kv == c.KvSpi(mpk_spi) and [k.spi for k in opened.session_keys] == [tgk_spi]
    # the UE side reads them
    assert (r.initiator.mpki_spi, r.initiator.mpkr_spi) == (mpk_spi, mpk_spi)
    assert (r.responder.mpki_spi, r.responder.mpkr_spi) == (mpk_spi, mpk_spi)
    assert [k.spi for k in r.initiator.keys] == [tgk_spi] == [k.spi for k in r.responder.keys]


def test_the_kms_can_name_mpki_mpkr_and_each_session_key_apart() -> None:
    r = run(FORKING)
    req = decode(r.request_init)
    opened = open_ticket(decode(r.transfer_init).ticket_bytes(), r.kms._tpk_port)
    ticket = decode(r.request_resp).require(c.Ticket)
    raw = build_request_resp(req, PSK_A, t=ntp_t(2), ticket=ticket, mpki=opened.mpki,
                             mpkr=opened.mpkr, session_keys=opened.session_keys, mpki_spi=b"i",
                             mpkr_spi=b"r", key_spis=[b"t"])  # fmt: skip
    assert [k.spi for k in open_kemac(decode(raw), PSK_A, req)] == [b"i", b"r", b"t"]
    resolve = decode(r.resolve_init)
    raw = build_resolve_resp(resolve, PSK_B, t=ntp_t(3), opened=opened, responder_identity=BOB,
                             rand_kms=b"k" * 16, mpki_spi=b"I", mpkr_spi=b"R",
                             key_spis=[b"T"])  # fmt: skip
    assert [k.spi for k in open_kemac(decode(raw), PSK_B, resolve)] == [b"I", b"R", b"T"]
    with pytest.raises(MikeyError, match="2 SPIs for 1 session keys"):
        build_resolve_resp(resolve, PSK_B, t=ntp_t(3), opened=opened, responder_identity=BOB,
                           rand_kms=b"k" * 16, key_spis=[b"T", b"U"])  # fmt: skip
    with pytest.raises(MikeyError, match="2 SPIs for 1 session keys"):
        seal_ticket(policy(PLAIN), tpk=TPK, thdr_data=b"", t=ntp_t(1), rand=b"R" * 16,
                    mpk=b"M" * 16, session_keys=[c.KeyData(KeyDataType.TGK, b"G" * 16)],
                    key_spis=[b"a", b"b"])  # fmt: skip


def test_builders_without_spis_keep_the_key_validity_they_are_given() -> None:
    """Until the core passes SPIs, today's calls build what they always built."""
    r = run(PLAIN)
    req = decode(r.request_init)
    opened = open_ticket(decode(r.transfer_init).ticket_bytes(), r.kms._tpk_port)
    bare = c.KeyData(KeyDataType.TGK, b"G" * 16)
    ticket = decode(r.request_resp).require(c.Ticket)
    raw = build_request_resp(req, PSK_A, t=ntp_t(2), ticket=ticket, mpki=opened.mpki, mpkr=None,
                             session_keys=[bare])  # fmt: skip
    assert [k.kv for k in open_kemac(decode(raw), PSK_A, req)] == [c.KvNull(), c.KvNull()]


def test_a_crypto_session_offered_without_an_spi_is_named_by_the_tgks_spi() -> None:
    """RFC 6043 6.1.1: 'SPI (variable length): the SPI (or MKI) corresponding to the session key
    to (initially) be used for the crypto session' - the TEKs come from the ticket's TGK."""
    r = run(PLAIN, entries=[c.GenericIdEntry.srtp(1, 0x1000), c.GenericIdEntry.srtp(2, 0x1001)])
    tgk_spi = r.kms.spis[0][1]
    init_map = decode(r.transfer_init).header.cs_map
    assert isinstance(init_map, c.GenericIdMap)
    assert [e.spi for e in init_map.entries] == [tgk_spi, tgk_spi]
    assert [k.spi for k in r.initiator_keys] == [tgk_spi, tgk_spi] == [k.spi for k in xk_view(r)]


# --- item 2: the crypto sessions the TRANSFER_RESP answers or adds ------------------------------


def test_keys_for_crypto_sessions_the_responder_adds_or_renames_follow_its_answer() -> None:
    """RFC 6043 4.2.2.3: 'If needed, the Responder MAY update Session Data and SPI provided by the
    Initiator.  If the Responder adds crypto sessions, the #CS SHALL be updated.'  Both UEs and
    the Xk view derive keys for every crypto session of the answer, with the answer's SPIs."""
    added = c.GenericIdEntry.srtp(7, 0x2000, spi=b"\x77")
    renamed = c.GenericIdEntry.srtp(2, 0x1001, spi=b"\x22\x22")
    for flags in (PLAIN, FORKING):
        r = run(flags, resp_sessions=[renamed, added])
        resp_map = decode(r.transfer_resp).header.cs_map
        assert isinstance(resp_map, c.GenericIdMap) and len(resp_map.entries) == 3  # #CS updated
        assert [(k.cs_id, k.spi) for k in r.initiator_keys] == [
            (1, b"\x00"), (2, b"\x22\x22"), (7, b"\x77")]  # fmt: skip
        assert r.initiator_keys == r.responder_keys == xk_view(r)
        assert [k.cs_id for k in xk_view(r, with_resp=False)] == [1, 2]  # the offer alone


def test_an_answer_with_an_empty_map_uses_no_crypto_session() -> None:
    init = decode(run(PLAIN).transfer_init)
    answer = Message(c.Header(DataType.TRANSFER_RESP, init.header.csb_id, c.EmptyMap()))
    assert crypto_sessions(init, answer) == []


# --- item 3: key and salt lengths from the security policy ---------------------------------------


def test_a_policy_asking_for_a_32_byte_master_key_gets_a_32_byte_tek_and_its_salt() -> None:
    """RFC 3830 6.10.1: 'Note also that, if "Session Encr. key length" is set, this should also be
    seen as the Master key length (otherwise, the SRTP default Master key length is used)'; type
    4 is the 'Session Salt key length'; RFC 6188 defines AES_256_CM with a 256-bit master key and
    112-bit master salt (RFC 3711's default: 128-bit key, 112-bit salt)."""
    aes256 = _sp(1, encr_alg=1, session_encr_key_len=32, session_salt_len=14)
    r = run(FORKING, prf=PrfFunc.PRF_HMAC_SHA_256, key_len=32, rand_len=32, policies=[aes256],
            policy_nos=(1,))  # fmt: skip
    assert [(len(k.tek), len(k.salt)) for k in r.initiator_keys] == [(32, 14), (32, 14)]
    assert r.initiator_keys == r.responder_keys == xk_view(r) == xk_view(r, with_resp=False)
    odd_salt = _sp(3, session_encr_key_len=24, session_salt_len=12)
    r = run(PLAIN, sessions=1, policies=[odd_salt], policy_nos=(3,))
    assert [(len(k.tek), len(k.salt)) for k in r.initiator_keys] == [(24, 12)]
    # the SRTP defaults when no policy (or a policy that leaves them unset) says otherwise
    for kw in ({}, {"policies": [_sp(0, auth_tag_len=10)], "policy_nos": (0,)}):
        r = run(PLAIN, sessions=1, **kw)  # type: ignore[arg-type]
        assert [(len(k.tek), len(k.salt)) for k in r.initiator_keys] == [(16, 14)]


def test_the_answers_chosen_policy_decides_between_offered_policies() -> None:
    """RFC 6043 6.1.1: '#P ... In response messages, #P SHALL always be exactly 1 ... If #P > 0,
    one of the suggested policies SHOULD be chosen in the response message'; 'In response
    messages, the policy_no may refer to a SP payload in the initial message.'"""
    offer = [_sp(1, session_encr_key_len=16), _sp(2, session_encr_key_len=24)]
    r = run(PLAIN, sessions=1, policies=offer, policy_nos=(2, 1))
    resp_map = decode(r.transfer_resp).header.cs_map
    assert isinstance(resp_map, c.GenericIdMap) and resp_map.entries[0].policy_nos == (2,)
    assert [len(k.tek) for k in r.initiator_keys] == [24] and r.initiator_keys == xk_view(r)
    with pytest.raises(MikeyError, match="offered policies differ") as exc:
        xk_view(r, with_resp=False)
    assert exc.value.err is ErrNo.INVALID_SPPAR


@pytest.mark.parametrize(
    ("sp", "err", "why"),
    [
        (_sp(1, session_encr_key_len=20), ErrNo.INVALID_SPPAR, "key length 20 not supported"),
        (_sp(1, session_encr_key_len=8), ErrNo.INVALID_SPPAR, "key length 8 not supported"),
        (_sp(1, session_salt_len=40), ErrNo.INVALID_SPPAR, "salt length 40 not supported"),
        (c.SecurityPolicy(1, ProtType.SRTP, (c.PolicyParam(SrtpParam.SESSION_ENCR_KEY_LEN, b""),)),
         ErrNo.INVALID_SPPAR, "empty SESSION_ENCR_KEY_LEN"),
        (_sp(9, session_encr_key_len=16), ErrNo.INVALID_SP, "no SP payload has policy no 1"),
    ],
)  # fmt: skip
def test_policies_the_codec_cannot_honour_are_refused(
    sp: c.SecurityPolicy, err: ErrNo, why: str
) -> None:
    r = run(PLAIN, sessions=1)
    init = decode(r.transfer_init)
    block = dataclasses.replace(c.GenericIdEntry.srtp(1, 0x1000), policy_nos=(1,))
    header = dataclasses.replace(init.header, cs_map=c.GenericIdMap((block,)))
    offer = decode(encode(Message(header, (*init.payloads[:4], sp, *init.payloads[4:]))))
    with pytest.raises(MikeyError, match=why) as exc:
        session_keys(offer, r.responder.keys)
    assert exc.value.err is err


def test_a_policy_of_another_protocol_leaves_the_srtp_defaults() -> None:
    assert policy_lengths(c.SecurityPolicy(1, 7, (c.PolicyParam(1, b"\x20"),))) == (None, None)
    assert policy_lengths(None) == (None, None)


def test_a_ticket_of_teks_must_match_the_policys_key_length() -> None:
    r = run(PLAIN, sessions=1, policies=[_sp(1, session_encr_key_len=32)], policy_nos=(1,))
    init = decode(r.transfer_init)
    with pytest.raises(MikeyError, match="16-byte TEK where the policy asks for 32") as exc:
        session_keys(init, [c.KeyData(KeyDataType.TEK, b"t" * 16)])
    assert exc.value.err is ErrNo.INVALID_SPPAR
    assert [len(k.tek) for k in session_keys(init, [c.KeyData(KeyDataType.TEK, b"t" * 32)])] == [32]


def test_srtp_id_maps_name_crypto_sessions_by_position_and_policy_no() -> None:
    """RFC 3830 6.1.1 (for completeness; MIKEY-TICKET transfers refuse this map, rules.py)."""
    init = decode(run(PLAIN).transfer_init)
    srtp = c.SrtpIdMap((c.SrtpIdEntry(1, 5, 0), c.SrtpIdEntry(1, 6, 0)))
    msg = Message(dataclasses.replace(init.header, cs_map=srtp),
                  (_sp(1, session_encr_key_len=32), *init.payloads))  # fmt: skip
    assert [(s.cs_id, s.tek_len) for s in crypto_sessions(msg)] == [(1, 32), (2, 32)]


# --- item 9: the Responder's answer per crypto session -------------------------------------------


def test_the_responders_answer_has_one_policy_session_data_and_an_spi_per_crypto_session() -> None:
    """RFC 6043 4.2.2.3: 'The Responder SHALL update the CS ID map info so that each crypto
    session has exactly one security policy indicated.  The Responder MUST provide Session Data
    (at least for SRTP) and SPI for each crypto session for which the Initiator has not supplied
    Session Data and SPI'; 6.1.1: 'So if #P = 0 in an initial message, a security profile MUST be
    provided in the response message.'"""
    r = run(PLAIN, entries=[c.GenericIdEntry.srtp(1, 0x1000), c.GenericIdEntry.srtp(2, 0x1001)])
    resp = decode(r.transfer_resp)
    resp_map = resp.header.cs_map
    assert isinstance(resp_map, c.GenericIdMap)
    sps = resp.find_all(c.SecurityPolicy)
    assert sps == [c.SecurityPolicy(0, ProtType.SRTP)]  # SRTP defaults, added once
    for e in resp_map.entries:
        assert e.policy_nos == (0,) and e.session_data and e.spi == r.kms.spis[0][1]
    # its own policy instead of the default, and a number the offer does not use
    own = _sp(5, session_encr_key_len=16)
    resp_map = decode(r.responder.transfer_resp(t=ntp_t(6), policies=[own])).header.cs_map
    assert isinstance(resp_map, c.GenericIdMap) and resp_map.entries[0].policy_nos == (5,)
    # an offer without SPIs is answered with the SPI the KMS gave the TGK
    r = run(PLAIN)
    r.initiator.keys = tuple(dataclasses.replace(k, kv=c.KvNull()) for k in r.initiator.keys)
    bob = _transfer(r, [c.GenericIdEntry.srtp(1, 7)])
    assert bob.init is not None
    offer = bob.init.header.cs_map
    assert isinstance(offer, c.GenericIdMap) and offer.entries[0].spi == b""
    resp_map = decode(bob.transfer_resp(t=ntp_t(12))).header.cs_map
    assert isinstance(resp_map, c.GenericIdMap) and resp_map.entries[0].spi == r.kms.spis[0][1]
    # without SPIs from anywhere the CS ID names the key (unique in the CSB)
    bob = _transfer(run(PLAIN), [c.GenericIdEntry.srtp(1, 7), c.GenericIdEntry.srtp(2, 8)],
                    unnamed=True)  # fmt: skip
    resp_map = decode(bob.transfer_resp(t=ntp_t(12))).header.cs_map
    assert isinstance(resp_map, c.GenericIdMap)
    assert [e.spi for e in resp_map.entries] == [b"\x01", b"\x02"]


def test_the_responder_needs_session_data_the_initiator_left_out() -> None:
    bob = _transfer(run(PLAIN), [c.GenericIdEntry(1)])  # offered with no SSRC at all
    with pytest.raises(MikeyError, match="CS 1: Session Data needed"):
        bob.transfer_resp(t=ntp_t(12))
    filled = decode(bob.transfer_resp(t=ntp_t(12), sessions=[c.GenericIdEntry.srtp(1, 0x5555)]))
    assert isinstance(filled.header.cs_map, c.GenericIdMap)
    assert filled.header.cs_map.entries[0].ssrc == 0x5555


def test_the_responder_refuses_a_transfer_init_with_the_srtp_id_map() -> None:
    """RFC 6043 6.1: 'The map type SRTP-ID SHALL NOT be used.' - refused before any resolve."""
    init = decode(run(PLAIN).transfer_init)
    srtp = dataclasses.replace(init.header, cs_map=c.SrtpIdMap((c.SrtpIdEntry(0, 5, 0),)))
    with pytest.raises(MikeyError, match="SRTP-ID") as exc:
        Responder(BOB, PSK_B, KMS_ID).receive_transfer_init(encode(Message(srtp, init.payloads)))
    assert exc.value.offset == 9


# --- item 10: keys the UEs supply (L and M flags) ------------------------------------------------


def test_keys_a_ue_supplies_under_l_or_m_are_the_keys_the_xk_view_releases() -> None:
    """RFC 6043 4.2.2.1: 'Initiator-specified keys MAY be used if the Initiator has pre-encrypted
    content ... If indicated by the Ticket Policy (L flag), a KEMAC payload SHALL NOT be
    included'; 4.2.2.3 the same for the Responder (M flag); 5.2: 'The encr_key (and salt_key)
    SHALL be derived from the MPK (MPKi or MPKr') ... If a new TGK is exchanged, it SHALL NOT be
    forked'; 8: 'The Responder includes the TEK in the TRANSFER_RESP message'.  The KMS holds the
    MPKs, so the keys released are the ones the media uses, not the ticket's."""
    teks = [c.KeyData(KeyDataType.TEK_SALT, b"I" * 16, b"s" * 14),
            c.KeyData(KeyDataType.TEK_SALT, b"J" * 16, b"t" * 14)]  # fmt: skip
    r = run(ALLOW_UE_KEYS, init_keys=teks)
    assert [(k.tek, k.salt) for k in r.initiator_keys] == [(b"I" * 16, b"s" * 14),
                                                           (b"J" * 16, b"t" * 14)]  # fmt: skip
    assert r.initiator_keys == r.responder_keys == xk_view(r)
    tgk = [c.KeyData(KeyDataType.TGK, b"R" * 16)]
    for flags in (ALLOW_UE_KEYS, ALLOW_UE_KEYS | c.TpFlags.I):
        r = run(flags, init_keys=teks, resp_keys=tgk)
        ticket_only = run(flags)
        assert r.initiator_keys == r.responder_keys == xk_view(r)
        assert [k.tek for k in r.initiator_keys] != [k.tek for k in ticket_only.initiator_keys]
    with pytest.raises(MikeyError, match="needs MPKi"):  # an Xk that cannot open them releases none
        session_keys(decode(r.transfer_init), r.responder.keys)
    with pytest.raises(MikeyError, match="needs MPKi or MPKr'"):
        session_keys(decode(r.transfer_init), r.responder.keys, resp=decode(r.transfer_resp),
                     mpki=r.responder.mpki)  # fmt: skip


def test_a_kemac_the_ticket_does_not_allow_is_refused() -> None:
    """RFC 6043 6.10: 'L ... whether the Initiator MAY supply session keys ('1') or if the
    Initiator SHALL NOT supply session keys ('0')'; 'M' the same for the Responder."""
    allowed = run(ALLOW_UE_KEYS, init_keys=[c.KeyData(KeyDataType.TGK, b"I" * 16)],
                  resp_keys=[c.KeyData(KeyDataType.TGK, b"R" * 16)])  # fmt: skip
    plain = run(PLAIN)
    kemac = decode(allowed.transfer_init).require(c.Kemac)
    init = decode(plain.transfer_init)
    smuggled = decode(encode(Message(init.header, (*init.payloads[:-1], kemac, init.payloads[-1]))))
    with pytest.raises(MikeyError, match=r"supply keys \(L\)"):
        session_keys(smuggled, plain.responder.keys, mpki=plain.responder.mpki)
    resp = decode(plain.transfer_resp)
    answered = decode(encode(Message(resp.header, (*resp.payloads[:-1], kemac, resp.payloads[-1]))))
    with pytest.raises(MikeyError, match=r"supply keys \(M\)"):
        session_keys(init, plain.responder.keys, resp=answered, resp_key=plain.responder.mpki)
    for step in (
        lambda: plain.initiator.transfer_init(csb_id=1, t=ntp_t(4), rand_i=b"i" * 16,
                                              sessions=[], responder=BOB,
                                              keys=[c.KeyData(KeyDataType.TGK, b"I" * 16)]),
        lambda: plain.responder.transfer_resp(t=ntp_t(6),
                                              keys=[c.KeyData(KeyDataType.TGK, b"R" * 16)]),
    ):  # fmt: skip
        with pytest.raises(MikeyError, match="does not let"):
            step()


def test_the_ue_roles_run_the_message_rules_on_what_they_receive() -> None:
    """RFC 6043 6.1.1: 'In response messages, #P SHALL always be exactly 1'; 4.2.1.5: the
    REQUEST_RESP's '#CS, and CS ID map type fields ... SHALL be identical to the corresponding
    fields in the REQUEST_INIT message' - checked before any key is derived."""
    r = run(PLAIN)
    resp = decode(r.transfer_resp)
    assert isinstance(resp.header.cs_map, c.GenericIdMap)
    no_policy = c.GenericIdMap(tuple(dataclasses.replace(e, policy_nos=())
                                     for e in resp.header.cs_map.entries))  # fmt: skip
    bad = encode(Message(dataclasses.replace(resp.header, cs_map=no_policy), resp.payloads))
    with pytest.raises(MikeyError, match="#P SHALL be exactly 1"):
        r.initiator.process_transfer_resp(bad)
    i = Initiator(ALICE, PSK_A, KMS_ID)
    i.request_init(csb_id=1, t=ntp_t(0), rand_i=b"i" * 16, policy=policy(PLAIN))
    rresp = decode(r.request_resp)
    sessions = c.GenericIdMap((c.GenericIdEntry.srtp(1, 5),))
    with pytest.raises(MikeyError, match="Empty map") as exc:
        i.process_request_resp(encode(Message(dataclasses.replace(rresp.header, cs_map=sessions),
                                              rresp.payloads)))  # fmt: skip
    assert exc.value.offset == 9
