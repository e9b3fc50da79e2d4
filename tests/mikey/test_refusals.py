"""Refusals of the MAC, ticket, KMS and UE layers, each named after what it stops, with the ERR
number the node answers with.  Tampered messages are re-encoded from decoded ones, so every refusal
here is reached through the same decode path a received message takes."""

from __future__ import annotations

import dataclasses

import pytest

from firmware.mikey import codec as c
from firmware.mikey.constants import (
    DataType,
    ErrNo,
    IdRole,
    KeyDataType,
    MacAlg,
    RandRole,
    TsRole,
    TsType,
)
from firmware.mikey.crypto import compute_mac, kemac_crypt, message_keys, ticket_keys
from firmware.mikey.errors import MikeyError
from firmware.mikey.exchange import Initiator, Responder
from firmware.mikey.kms import (
    build_error,
    build_request_resp,
    build_resolve_resp,
    sign_message,
    verify_error,
    verify_initiator_data,
)
from firmware.mikey.message import (
    Message,
    appended_identities,
    coverage,
    decode,
    encode,
    mac_input,
    ticket_mac_input,
    with_mac,
)
from firmware.mikey.ticket import (
    TICKET_CSB_ID,
    OpenedTicket,
    open_ticket,
    peek_ticket,
    seal_ticket,
    ticket_raw,
)
from firmware.mikey.transfer import (
    check_vi,
    forked_mpkr_for,
    message_rands,
    session_keys,
    verify_transfer_init,
    verify_transfer_resp,
    verify_v,
)

from .corpus import (
    ALICE,
    BOB,
    FORKING,
    KMS_ID,
    PLAIN,
    PSK_A,
    PSK_B,
    WITH_RANDRR,
    Run,
    policy,
    run,
)
from .kms_double import ntp_t

TPK = bytes(range(0x10, 0x20))  # the KMS double's software TPK


@pytest.fixture(scope="module")
def plain() -> Run:
    return run(PLAIN)


@pytest.fixture(scope="module")
def forking() -> Run:
    return run(FORKING)


def _rebuild(
    msg: Message, *, header: c.Header | None = None, payloads: tuple[c.Payload, ...] | None = None
) -> Message:
    """The message as a receiver sees it after a sender (or attacker) re-encoded it."""
    body = msg.payloads if payloads is None else payloads
    return decode(encode(Message(header or msg.header, body)))


def _without(msg: Message, kind: type) -> Message:
    return _rebuild(msg, payloads=tuple(p for p in msg.payloads if not isinstance(p, kind)))


def _with_ticket(msg: Message, ticket: c.Ticket) -> Message:
    swapped = tuple(ticket if isinstance(p, c.Ticket) else p for p in msg.payloads)
    return _rebuild(msg, payloads=swapped)


def _opened(r: Run) -> OpenedTicket:
    return open_ticket(decode(r.transfer_init).ticket_bytes(), r.kms._tpk_port)


# --- TRANSFER_INIT / TRANSFER_RESP (MAC keyed with MPKi / MPKr') ---------------------------------


def test_refuses_transfer_init_stripped_of_its_v(plain: Run) -> None:
    init = decode(plain.transfer_init)
    stripped = _rebuild(init, payloads=init.payloads[:-1])
    with pytest.raises(MikeyError) as exc:
        verify_transfer_init(stripped, _opened(plain).mpki)
    assert exc.value.err is ErrNo.AUTH_FAILURE
    with pytest.raises(MikeyError) as exc:
        mac_input(stripped)
    assert exc.value.err is ErrNo.AUTH_FAILURE


def test_refuses_transfer_init_downgraded_to_a_null_mac(plain: Run) -> None:
    """An attacker re-signs the message with Auth alg NULL (no MAC bytes at all)."""
    init = decode(plain.transfer_init)
    key = message_keys(init.header.prf_func, _opened(plain).mpki, init.header.csb_id,
                       response=False, rand_i=init.randr(RandRole.RANDRi), rand_r=None,
                       mac_alg=MacAlg.NULL).auth_key  # fmt: skip
    raw = sign_message(init.header, init.payloads[:-1], key, MacAlg.NULL)
    nulled = decode(raw)
    assert nulled.payloads[-1] == c.Verification(MacAlg.NULL, b"")
    with pytest.raises(MikeyError) as exc:
        verify_transfer_init(nulled, _opened(plain).mpki)
    assert exc.value.err is ErrNo.INVALID_MAC


def test_refuses_transfer_init_without_randri_so_its_keys_cannot_be_stale(plain: Run) -> None:
    stripped = _without(decode(plain.transfer_init), c.RoleRand)
    with pytest.raises(MikeyError, match="no RAND") as exc:
        verify_transfer_init(stripped, _opened(plain).mpki)
    assert exc.value.err is ErrNo.UNSPECIFIED


def test_refuses_transfer_init_without_its_mandatory_ticket(plain: Run) -> None:
    stripped = _without(decode(plain.transfer_init), c.Ticket)
    for refuse in (
        lambda: Responder(BOB, PSK_B, KMS_ID).receive_transfer_init(stripped.raw),
        lambda: verify_transfer_init(stripped, _opened(plain).mpki),  # no MAC input without it
        stripped.ticket_bytes,
        lambda: session_keys(stripped, _opened(plain).session_keys),  # no policy without it
    ):
        with pytest.raises(MikeyError, match="TICKET") as exc:
            refuse()
        assert exc.value.err is ErrNo.INVALID_TICKET


def test_refuses_other_messages_presented_as_transfer_init_or_resp(plain: Run) -> None:
    init, resolve = decode(plain.transfer_init), decode(plain.resolve_init)
    with pytest.raises(MikeyError) as exc:
        verify_transfer_init(resolve, _opened(plain).mpki)
    assert exc.value.err is ErrNo.INVALID_DT
    with pytest.raises(MikeyError) as exc:
        Responder(BOB, PSK_B, KMS_ID).receive_transfer_init(plain.resolve_init)
    assert (exc.value.err, exc.value.offset) == (ErrNo.INVALID_DT, 1)  # the data type byte
    with pytest.raises(MikeyError) as exc:  # the initiator's own TRANSFER_INIT reflected back
        verify_transfer_resp(init, init, _opened(plain).mpki)
    assert exc.value.err is ErrNo.INVALID_DT


def test_refuses_transfer_resp_of_another_crypto_session_bundle(plain: Run) -> None:
    init, resp = decode(plain.transfer_init), decode(plain.transfer_resp)
    moved = _rebuild(resp, header=dataclasses.replace(resp.header, csb_id=resp.header.csb_id ^ 1))
    with pytest.raises(MikeyError, match="CSB ID") as exc:
        verify_transfer_resp(moved, init, _opened(plain).mpki)
    assert exc.value.err is ErrNo.AUTH_FAILURE


def test_refuses_to_fork_without_the_kms_modifier(plain: Run) -> None:
    opened = _opened(plain)
    with pytest.raises(MikeyError, match="IDRr and RANDRkms"):
        forked_mpkr_for(decode(plain.transfer_resp), opened.policy, opened.mpkr)


def test_refuses_initiator_data_whose_vi_is_not_the_transfer_init_v(forking: Run) -> None:
    init = decode(forking.transfer_init)
    ticket = init.require(c.Ticket)
    assert ticket.initiator_data is not None
    vi, vr = ticket.initiator_data
    assert isinstance(vi, c.Verification)
    other_vi = c.Verification(vi.mac_alg, bytes(len(vi.mac)))
    tampered = _with_ticket(init, dataclasses.replace(ticket, initiator_data=(other_vi, vr)))
    with pytest.raises(MikeyError) as exc:
        check_vi(tampered)
    assert exc.value.err is ErrNo.AUTH_FAILURE


def test_stripping_initiator_data_does_not_skip_the_vr_or_vi_checks(forking: Run) -> None:
    init = decode(forking.transfer_init)
    ticket = init.require(c.Ticket)
    stripped = _with_ticket(init, dataclasses.replace(ticket, initiator_data=None))
    opened = _opened(forking)
    verify_transfer_init(stripped, opened.mpki)  # Initiator Data is outside this MAC ...
    with pytest.raises(MikeyError) as exc:  # ... so the forking checks must notice it is gone
        verify_initiator_data(stripped, opened.mpkr)
    assert exc.value.err is ErrNo.AUTH_FAILURE
    with pytest.raises(MikeyError) as exc:
        check_vi(stripped)
    assert exc.value.err is ErrNo.AUTH_FAILURE


# --- response coverage (RFC 6043 Table 5.2) ------------------------------------------------------


def test_response_mac_needs_the_initial_message_as_received(plain: Run) -> None:
    req, resp = decode(plain.request_init), decode(plain.request_resp)
    with pytest.raises(MikeyError, match="initial message"):
        verify_v(resp, PSK_A)
    re_encoded = Message(req.header, req.payloads)  # equal to req, but not the received bytes
    assert re_encoded == req
    with pytest.raises(MikeyError, match="received initial message"):
        verify_v(resp, PSK_A, initial=re_encoded)
    verify_v(resp, PSK_A, initial=req)


def test_refuses_request_resp_spliced_onto_a_transfer_init(plain: Run) -> None:
    """Both carry RANDRi, so only the data type of the initial message tells them apart."""
    resp, init = decode(plain.request_resp), decode(plain.transfer_init)
    with pytest.raises(MikeyError) as exc:
        verify_v(resp, PSK_A, initial=init)
    assert exc.value.err is ErrNo.INVALID_DT


def test_error_messages_are_not_keyed_like_exchange_messages(plain: Run) -> None:
    req = decode(plain.request_init)
    key = verify_v(req, PSK_A, kms=KMS_ID)
    err = decode(build_error(req.header, [ErrNo.INVALID_TS], t=ntp_t(9), auth_key=key))
    assert err.data_type is DataType.ERROR
    with pytest.raises(MikeyError) as exc:
        verify_v(err, key, initial=req)
    assert exc.value.err is ErrNo.INVALID_DT
    with pytest.raises(MikeyError):
        message_rands(err, req)
    # Table 5.2: an Error message's V covers the Error message alone, nothing appended
    assert appended_identities(err) == b""
    v = err.payloads[-1]
    assert isinstance(v, c.Verification)
    assert coverage(err) == err.raw[: -len(v.mac)]
    assert compute_mac(v.mac_alg, key, coverage(err)) == v.mac


def test_refuses_an_unauthenticated_error_message_as_authenticated(plain: Run) -> None:
    req = decode(plain.request_init)
    key = verify_v(req, PSK_A, kms=KMS_ID)
    forged = decode(build_error(req.header, [ErrNo.AUTH_FAILURE], t=ntp_t(9)))
    for msg in (forged, req):
        with pytest.raises(MikeyError) as exc:
            verify_error(msg, key)
        assert exc.value.err is ErrNo.INVALID_DT


def test_with_mac_replaces_only_a_mac_of_the_same_length(plain: Run) -> None:
    init = decode(plain.transfer_init)
    forged = decode(encode(with_mac(init, bytes(20))))
    with pytest.raises(MikeyError) as exc:
        verify_transfer_init(forged, _opened(plain).mpki)
    assert exc.value.err is ErrNo.AUTH_FAILURE
    with pytest.raises(MikeyError, match="MAC length"):
        with_mac(init, bytes(32))
    with pytest.raises(MikeyError, match="not V"):
        with_mac(Message(init.header), bytes(20))


# --- session keys (K3) ---------------------------------------------------------------------------


def test_g_flag_teks_cannot_be_derived_without_the_responders_randrr() -> None:
    r = run(WITH_RANDRR)
    init = decode(r.transfer_init)
    with pytest.raises(MikeyError, match="RANDRr"):
        session_keys(init, _opened(r).session_keys)
    assert session_keys(init, _opened(r).session_keys, resp=decode(r.transfer_resp)) == (
        r.initiator_keys
    )


def test_tek_derivation_refuses_a_policy_allowing_neither_randri_nor_randrr(plain: Run) -> None:
    init = decode(plain.transfer_init)
    ticket = init.require(c.Ticket)
    neither = dataclasses.replace(ticket.policy, flags=c.TpFlags.D | c.TpFlags.N)
    bad = _with_ticket(init, dataclasses.replace(ticket, policy=neither))
    with pytest.raises(MikeyError) as exc:
        session_keys(bad, _opened(plain).session_keys)
    assert exc.value.err is ErrNo.INVALID_TPPAR


def test_a_ticket_of_teks_gives_tek_i_to_crypto_session_i() -> None:
    init = decode(run(PLAIN, sessions=2).transfer_init)
    teks = [c.KeyData(KeyDataType.TEK, b"a" * 16), c.KeyData(KeyDataType.TEK_SALT, b"b" * 16, b"s")]
    keys = session_keys(init, teks)
    assert [(k.cs_id, k.tek, k.salt) for k in keys] == [(1, b"a" * 16, b""), (2, b"b" * 16, b"s")]
    with pytest.raises(MikeyError, match="fewer TEKs"):
        session_keys(init, teks[:1])


# --- KMS building blocks -------------------------------------------------------------------------


def test_kms_answers_only_the_request_as_received_and_of_the_right_type(plain: Run) -> None:
    req, resolve = decode(plain.request_init), decode(plain.resolve_init)
    opened = _opened(plain)
    ticket = decode(plain.request_resp).require(c.Ticket)
    args = {"t": ntp_t(2), "ticket": ticket, "mpki": opened.mpki, "mpkr": None}
    with pytest.raises(MikeyError, match="received message"):
        build_request_resp(Message(req.header, req.payloads), PSK_A, **args)  # type: ignore[arg-type]
    with pytest.raises(MikeyError) as exc:
        build_request_resp(resolve, PSK_A, **args)  # type: ignore[arg-type]
    assert exc.value.err is ErrNo.INVALID_DT
    with pytest.raises(MikeyError) as exc:
        build_resolve_resp(req, PSK_B, t=ntp_t(3), opened=opened)
    assert exc.value.err is ErrNo.INVALID_DT


def test_request_resp_without_kms_identity_is_accepted_by_the_initiator() -> None:
    r = run(PLAIN)
    req, ticket = decode(r.request_init), decode(r.request_resp).require(c.Ticket)
    opened = open_ticket(ticket_raw(ticket), TPK)
    resp = build_request_resp(req, PSK_A, t=ntp_t(2), ticket=ticket, mpki=opened.mpki, mpkr=None,
                              session_keys=opened.session_keys)  # fmt: skip
    assert decode(resp).idr(IdRole.IDRkms) is None
    assert r.initiator.process_request_resp(resp) == ticket
    assert r.initiator.mpki == opened.mpki and r.initiator.mpkr is None


def test_resolve_resp_without_forking_names_the_responder_but_sends_no_modifier() -> None:
    r = run(PLAIN)
    req = decode(r.resolve_init)
    opened = open_ticket(req.ticket_bytes(), TPK)
    raw = build_resolve_resp(req, PSK_B, t=ntp_t(3), opened=opened, responder_identity=BOB)
    resp = decode(raw)
    idr = resp.idr(IdRole.IDRr)
    assert idr is not None and idr.data == BOB
    assert resp.randr(RandRole.RANDRkms) is None and resp.idr(IdRole.IDRkms) is None
    r.responder.process_resolve_resp(raw)
    assert r.responder.mpki == opened.mpki
    anonymous = decode(build_resolve_resp(req, PSK_B, t=ntp_t(3), opened=opened))
    assert anonymous.idr(IdRole.IDRr) is None


def test_kms_refuses_to_fork_without_responder_identity_and_randrkms(forking: Run) -> None:
    req = decode(forking.resolve_init)
    opened = open_ticket(req.ticket_bytes(), TPK)
    with pytest.raises(MikeyError, match="responder identity and RANDRkms"):
        build_resolve_resp(req, PSK_B, t=ntp_t(3), opened=opened, rand_kms=b"r" * 16)


# --- base ticket ---------------------------------------------------------------------------------


def _seal(pol: c.TicketPolicy, **kw: object) -> c.Ticket:
    args: dict[str, object] = {"tpk": TPK, "thdr_data": b"v1", "t": ntp_t(1), "rand": b"R" * 16,
                               "mpk": b"M" * 16}  # fmt: skip
    args.update(kw)
    return seal_ticket(pol, **args)  # type: ignore[arg-type]


def test_opened_ticket_reports_validity_window_and_psk_identity() -> None:
    trs = c.RoleTimestamp(TsRole.TRs, TsType.NTP_UTC, ntp_t(0).value)
    tre = c.RoleTimestamp(TsRole.TRe, TsType.NTP_UTC, ntp_t(99).value)
    pol = policy(PLAIN)
    pol = dataclasses.replace(pol, payloads=(*(pol.payloads or ()), trs, tre))
    opened = open_ticket(ticket_raw(_seal(pol, idr_psk=b"alice-psk")), TPK)
    assert (opened.trs, opened.tre, opened.idr_psk) == (trs, tre, b"alice-psk")
    assert opened.policy.find_all(c.RoleTimestamp) == [trs, tre]
    assert open_ticket(ticket_raw(_seal(policy(PLAIN))), TPK).trs is None


def test_refuses_empty_or_overlong_ticket_payloads() -> None:
    with pytest.raises(MikeyError) as exc:
        open_ticket(b"", TPK)
    assert (exc.value.err, exc.value.offset) == (ErrNo.INVALID_TICKET, 0)
    raw = ticket_raw(_seal(policy(PLAIN)))
    with pytest.raises(MikeyError, match="bytes after the TICKET") as exc:
        peek_ticket(raw + b"\x00")
    assert exc.value.offset == len(raw)


def test_refuses_a_ticket_without_kemac() -> None:
    t, rand = ntp_t(1), c.Rand(b"R" * 16)
    td = c.TicketData(c.TicketHeader(b"v1"), (t, rand, c.Verification(MacAlg.HMAC_SHA_1_160,
                                                                      bytes(20))))  # fmt: skip
    raw = ticket_raw(c.Ticket(policy(PLAIN), c.serialize_ticket_data(td)))
    with pytest.raises(MikeyError, match="lacks") as exc:
        open_ticket(raw, TPK)
    assert exc.value.err is ErrNo.INVALID_TICKET


def test_refuses_to_seal_a_ticket_without_a_mac() -> None:
    with pytest.raises(MikeyError) as exc:
        _seal(policy(PLAIN), mac_alg=MacAlg.NULL)
    assert exc.value.err is ErrNo.INVALID_MAC


def test_refuses_a_tpk_sealed_ticket_whose_kemac_does_not_start_with_the_mpk() -> None:
    """Only a TPK holder can make one (the MAC verifies); the MPK must still come first."""
    good = _seal(policy(PLAIN), session_keys=[c.KeyData(KeyDataType.TGK, b"G" * 16)])
    td = c.parse_ticket_data(good.ticket_data)
    t, rand, kemac, v = td.payloads
    assert isinstance(t, c.Timestamp) and isinstance(rand, c.Rand) and isinstance(kemac, c.Kemac)
    assert isinstance(v, c.Verification)
    keys = ticket_keys(good.policy.prf_func, TPK, rand.value, kemac.encr_alg, v.mac_alg)
    plain_keys = c.serialize_key_data([c.KeyData(KeyDataType.TGK, b"G" * 16)])
    encr = kemac_crypt(kemac.encr_alg, keys, TICKET_CSB_ID, t.as_64(), plain_keys, decrypt=False)
    kemac = dataclasses.replace(kemac, encr_data=encr)
    swapped = dataclasses.replace(td, payloads=(t, rand, kemac, v))
    unsigned = c.Ticket(good.policy, c.serialize_ticket_data(swapped))
    mac = compute_mac(v.mac_alg, keys.auth_key, ticket_mac_input(ticket_raw(unsigned))[:-20])
    resealed = c.Ticket(good.policy, unsigned.ticket_data[:-20] + mac)
    with pytest.raises(MikeyError, match="start with an MPK") as exc:
        open_ticket(ticket_raw(resealed), TPK)
    assert exc.value.err is ErrNo.INVALID_TICKET


# --- UE roles ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "why"),
    [
        (lambda i, r: i.process_request_resp(b""), "no REQUEST_INIT sent"),
        (
            lambda i, r: i.transfer_init(
                csb_id=1, t=ntp_t(4), rand_i=b"x" * 16, sessions=[], responder=BOB
            ),
            "no ticket",
        ),
        (lambda i, r: i.process_transfer_resp(b""), "no TRANSFER_INIT sent"),
        (lambda i, r: r.resolve_init(csb_id=1, t=ntp_t(5), rand_r=b"y" * 16), "no TRANSFER_INIT"),
        (lambda i, r: r.process_resolve_resp(b""), "no RESOLVE_INIT sent"),
        (lambda i, r: r.transfer_resp(t=ntp_t(6)), "ticket not resolved"),
        (lambda i, r: r.session_keys(), "no TRANSFER_INIT"),
    ],
    ids=[
        "request_resp",
        "transfer_init",
        "transfer_resp",
        "resolve_init",
        "resolve_resp",
        "responder_transfer_resp",
        "responder_keys",
    ],
)
def test_ue_roles_refuse_steps_taken_out_of_order(step: object, why: str) -> None:
    i, r = Initiator(ALICE, PSK_A, KMS_ID), Responder(BOB, PSK_B, KMS_ID)
    with pytest.raises(MikeyError, match=why):
        step(i, r)  # type: ignore[operator]


def test_ue_roles_refuse_their_own_initial_message_reflected_as_the_response() -> None:
    i = Initiator(ALICE, PSK_A, KMS_ID)
    req = i.request_init(csb_id=7, t=ntp_t(0), rand_i=b"i" * 16, policy=policy(PLAIN))
    with pytest.raises(MikeyError) as exc:
        i.process_request_resp(req)
    assert (exc.value.err, exc.value.offset) == (ErrNo.INVALID_DT, 1)  # the data type byte
    r = run(PLAIN)
    resp = Responder(BOB, PSK_B, KMS_ID)
    resp.receive_transfer_init(r.transfer_init)
    mine = resp.resolve_init(csb_id=8, t=ntp_t(5), rand_r=b"r" * 16)
    with pytest.raises(MikeyError) as exc:
        resp.process_resolve_resp(mine)
    assert (exc.value.err, exc.value.offset) == (ErrNo.INVALID_DT, 1)  # the data type byte


def test_exchange_without_psk_identities_derives_the_same_keys_on_both_sides() -> None:
    r = run(FORKING, psk_ids=False)
    assert decode(r.request_init).idr(IdRole.IDRpsk) is None
    assert decode(r.resolve_init).idr(IdRole.IDRpsk) is None
    assert r.initiator_keys == r.responder_keys


def _request_resp(r: Run, *, mpkr: bytes | None, extra: list[c.KeyData] | None = None) -> bytes:
    req, ticket = decode(r.request_init), decode(r.request_resp).require(c.Ticket)
    opened = open_ticket(ticket_raw(ticket), TPK)
    return build_request_resp(req, PSK_A, t=ntp_t(2), ticket=ticket, mpki=opened.mpki, mpkr=mpkr,
                              session_keys=[*(extra or []), *opened.session_keys])  # fmt: skip


def test_initiator_refuses_a_kemac_with_more_than_two_mpks() -> None:
    r = run(FORKING)
    raw = _request_resp(r, mpkr=b"r" * 16, extra=[c.KeyData(KeyDataType.MPK, b"m" * 16)])
    with pytest.raises(MikeyError, match="one or two MPKs"):
        r.initiator.process_request_resp(raw)


def test_initiator_cannot_fork_when_the_kms_withheld_mpkr() -> None:
    r = run(FORKING)
    i = r.initiator
    i.process_request_resp(_request_resp(r, mpkr=None))  # the forking ticket, but no MPKr
    with pytest.raises(MikeyError, match="needs MPKr"):  # its earlier forked TRANSFER_INIT
        i.process_transfer_resp(r.transfer_resp)
    with pytest.raises(MikeyError, match="needs MPKr from the KMS"):
        i.transfer_init(csb_id=9, t=ntp_t(4), rand_i=b"i" * 16,
                        sessions=[c.GenericIdEntry.srtp(1, 5)], responder=BOB)  # fmt: skip


def test_responder_refuses_resolve_resp_that_withholds_mpkr_for_a_forking_ticket() -> None:
    r = run(FORKING)
    resp = Responder(BOB, PSK_B, KMS_ID)
    resp.receive_transfer_init(r.transfer_init)
    req = decode(resp.resolve_init(csb_id=8, t=ntp_t(5), rand_r=b"r" * 16))
    opened = open_ticket(req.ticket_bytes(), TPK)
    unforked = dataclasses.replace(
        opened, policy=dataclasses.replace(opened.policy, flags=opened.flags & ~c.TpFlags.I)
    )
    raw = build_resolve_resp(req, PSK_B, t=ntp_t(3), opened=unforked, responder_identity=BOB)
    with pytest.raises(MikeyError, match="RANDRkms payload missing"):  # RFC 6043 4.2.3.5
        resp.process_resolve_resp(raw)
    # with the modifier present (and authentic), the KEMAC must still carry MPKr'
    unsigned = decode(raw)
    payloads = (*unsigned.payloads[:-1], c.RoleRand(RandRole.RANDRkms, b"k" * 16))
    key = message_keys(req.header.prf_func, PSK_B, req.header.csb_id, response=True, rand_i=None,
                       rand_r=req.randr(RandRole.RANDRr)).auth_key  # fmt: skip
    resigned = sign_message(unsigned.header, payloads, key, MacAlg.HMAC_SHA_1_160, req.raw)
    with pytest.raises(MikeyError, match="lacks MPKr'"):
        resp.process_resolve_resp(resigned)


def test_responder_needs_randrr_to_answer_a_g_flag_ticket() -> None:
    r = run(WITH_RANDRR)
    with pytest.raises(MikeyError, match="RANDRr required"):
        r.responder.transfer_resp(t=ntp_t(7))


def test_responder_echoes_an_empty_map_transfer_init_and_derives_no_session_keys() -> None:
    """Ticket Transfer SHOULD (not MUST) use GENERIC-ID: an Empty map means no crypto sessions."""
    r = run(PLAIN)
    init = decode(r.transfer_init)
    draft = _rebuild(init, header=dataclasses.replace(init.header, cs_map=c.EmptyMap()))
    key = message_keys(draft.header.prf_func, r.initiator.mpki, draft.header.csb_id,
                       response=False, rand_i=draft.randr(RandRole.RANDRi),
                       rand_r=None).auth_key  # fmt: skip
    mac = compute_mac(MacAlg.HMAC_SHA_1_160, key, mac_input(draft, appended_identities(draft)))
    resp = Responder(BOB, PSK_B, KMS_ID)
    resp.receive_transfer_init(encode(with_mac(draft, mac)))
    resp.process_resolve_resp(
        r.kms.handle_resolve(resp.resolve_init(csb_id=8, t=ntp_t(5), rand_r=b"r" * 16))
    )
    answer = decode(resp.transfer_resp(t=ntp_t(6)))
    assert answer.header.cs_map == c.EmptyMap() and answer.header.csb_id == init.header.csb_id
    assert resp.session_keys() == []
