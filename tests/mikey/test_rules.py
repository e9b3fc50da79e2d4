"""Message-level rules (issue 11 items 4, 8 and 11): required payloads of every data type (RFC 6043
4.2, 5.4), the header rules of the exchanges (4.2.1.1, 4.2.3.1, 6.1, 6.1.1) and algorithm
strength (12.1).  Every refusal carries its ERR and the offset where the problem is."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from firmware.mikey import codec as c
from firmware.mikey.constants import (
    CertType,
    DataType,
    EncrAlg,
    ErrNo,
    HashFunc,
    IdRole,
    IdType,
    MacAlg,
    PkeCache,
    PrfFunc,
    RandRole,
    SignType,
)
from firmware.mikey.errors import MikeyError
from firmware.mikey.kms import build_error
from firmware.mikey.message import Message, decode, encode
from firmware.mikey.rules import (
    COMPOSITIONS,
    MISSING_ERR,
    Slot,
    check_algorithms,
    check_header_rules,
    check_message,
    check_required_payloads,
)

from .corpus import ALICE, FORKING, KMS_ID, WITH_RANDRR, policy, run
from .kms_double import ntp_t


def _pk_initial(data_type: DataType, rand_role: RandRole, last: c.Payload) -> bytes:
    """A PK-variant initial message (no builder in the node: it serves PSK only)."""
    own = IdRole.IDRi if rand_role == RandRole.RANDRi else IdRole.IDRr
    header = c.Header(data_type, 7, c.EmptyMap(), PrfFunc.MIKEY_1, True)
    return encode(Message(header, (
        ntp_t(0), c.RoleRand(rand_role, bytes(16)), c.RoleIdentity(own, IdType.URI, ALICE),
        c.Certificate(CertType.X509V3, b"cert"), c.RoleIdentity(IdRole.IDRkms, IdType.URI, KMS_ID),
        last, c.CertHash(HashFunc.SHA_256, bytes(32)), c.Pke(PkeCache.NO_CACHE, b"envelope"),
        c.Signature(SignType.RSA_PSS, b"sig"),
    )))  # fmt: skip


def _valid_messages() -> dict[str, tuple[bytes, c.TpFlags | None]]:
    """One valid message per data type (and a TRANSFER_RESP of a G-flag ticket), each with the
    ticket flags its conditional payloads depend on."""
    forked, g = run(FORKING), run(WITH_RANDRR)
    ticket = decode(forked.transfer_init).require(c.Ticket)
    error = build_error(decode(forked.request_init).header, [ErrNo.INVALID_TS], t=ntp_t(9))
    return {
        "REQUEST_INIT_PSK": (forked.request_init, None),
        "REQUEST_INIT_PK": (
            _pk_initial(DataType.REQUEST_INIT_PK, RandRole.RANDRi, policy(FORKING)), None),
        "REQUEST_RESP": (forked.request_resp, None),
        "TRANSFER_INIT": (forked.transfer_init, None),
        "TRANSFER_RESP": (forked.transfer_resp, FORKING),
        "TRANSFER_RESP_G": (g.transfer_resp, WITH_RANDRR),
        "RESOLVE_INIT_PSK": (forked.resolve_init, None),
        "RESOLVE_INIT_PK": (_pk_initial(DataType.RESOLVE_INIT_PK, RandRole.RANDRr, ticket), None),
        "RESOLVE_RESP": (forked.resolve_resp, FORKING),
        "ERROR": (error, None),
    }  # fmt: skip


VALID = _valid_messages()


def _raw(data_type: DataType) -> bytes:
    return VALID[data_type.name][0]


def _cases() -> Iterator[tuple[str, Slot]]:
    for name, (raw, flags) in VALID.items():
        for slot in COMPOSITIONS[decode(raw).header.data_type]:
            conditional = flags is not None and slot.if_flags is not None
            if slot.required or (conditional and flags & slot.if_flags == slot.if_flags):  # type: ignore[operator]
                yield name, slot


CASES = list(_cases())


@pytest.mark.parametrize("name", list(VALID))
def test_complete_messages_of_every_type_pass_the_rules(name: str) -> None:
    raw, flags = VALID[name]
    check_message(decode(raw), flags=flags)


@pytest.mark.parametrize(("name", "slot"), CASES, ids=[f"{n}-{s.name}" for n, s in CASES])
def test_every_required_payload_of_every_message_type_missing_is_refused(
    name: str, slot: Slot
) -> None:
    """RFC 6043 4.2.1.1: 'The REQUEST_INIT message MUST always include the Header (HDR), Timestamp
    (T), and RANDRi payloads'; 4.2.2.1 and 4.2.3.1 say the same of TRANSFER_INIT (RANDRi) and
    RESOLVE_INIT (RANDRr); the message figures of 4.2.1, 4.2.2, 4.2.3 list TP, TICKET, KEMAC, PKE
    and SIGN without brackets; 'The last payload SHALL be a Verification payload (V)'; 4.2.2.3:
    'If indicated by the Ticket Policy (G flag), the Responder SHALL generate ... RANDRr', 'the
    same identity MUST be sent in an IDRr payload', 'the same RAND MUST be sent in a RANDRkms
    payload'; 5.4: 'Error message = HDR, T, (ERR), [V|SIGNx]'.  The refusal names the ERR of
    what is missing and the offset where it belongs."""
    raw, flags = VALID[name]
    msg = decode(raw)
    index = next(i for i, p in enumerate(msg.payloads) if slot.holds(p))
    stripped = decode(encode(Message(msg.header, msg.payloads[:index] + msg.payloads[index + 1 :])))
    with pytest.raises(MikeyError, match=f"{slot.name} (payload )?missing") as exc:
        check_required_payloads(stripped, flags=flags)
    assert exc.value.err is MISSING_ERR.get(slot.kind, ErrNo.UNSPECIFIED)
    assert exc.value.offset == msg.offsets[index]  # where the payload was


def test_every_data_type_with_a_composition_is_driven() -> None:
    driven = {decode(raw).header.data_type for raw, _ in VALID.values()}
    assert driven == set(COMPOSITIONS)
    assert {s.if_flags for _, s in CASES} >= {c.TpFlags.G, c.TpFlags.I}


def test_conditional_payloads_are_not_required_without_the_tickets_flags() -> None:
    raw, _ = VALID["TRANSFER_RESP"]
    msg = decode(raw)
    bare = [p for p in msg.payloads if not isinstance(p, (c.RoleIdentity, c.RoleRand))]
    check_required_payloads(decode(encode(Message(msg.header, tuple(bare)))))
    with pytest.raises(MikeyError, match="IDRr payload missing"):
        check_required_payloads(decode(encode(Message(msg.header, tuple(bare)))), flags=FORKING)


def test_a_v_that_is_not_the_last_payload_is_refused() -> None:
    """RFC 6043 4.2.1.2: 'The last payload SHALL be a Verification payload (V)'."""
    msg = decode(_raw(DataType.REQUEST_INIT_PSK))
    v = msg.payloads[-1]
    moved = decode(encode(Message(msg.header, (*msg.payloads[:2], v, *msg.payloads[2:-1]))))
    with pytest.raises(MikeyError, match="V not the last payload") as exc:
        check_required_payloads(moved)
    assert (exc.value.err, exc.value.offset) == (ErrNo.AUTH_FAILURE, moved.offsets[3])
    with pytest.raises(MikeyError, match="V missing"):
        check_required_payloads(Message(msg.header))  # nothing at all, not even received bytes


def test_unexpected_payloads_are_left_to_the_caller_to_ignore() -> None:
    """RFC 6043 4.2.1.4: 'Unexpected payloads in the REQUEST_INIT message SHOULD be ignored.'"""
    msg = decode(_raw(DataType.REQUEST_INIT_PSK))
    extra = (c.GeneralExtension(0, b"vendor"), c.RoleIdentity(241, 9, b"x"), c.Rand(b"r"))
    check_required_payloads(decode(encode(Message(msg.header, extra + msg.payloads))))


def test_rfc3830_data_types_have_no_mikey_ticket_composition() -> None:
    """RFC 3830 6.12: 'Invalid DT | 11 | not supported Data type' (the node serves MIKEY-TICKET)."""
    with pytest.raises(MikeyError) as exc:
        check_required_payloads(decode(encode(Message(c.Header(DataType.PSK_INIT, 1)))))
    assert (exc.value.err, exc.value.offset) == (ErrNo.INVALID_DT, 1)


# --- header rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data_type",
    [DataType.REQUEST_INIT_PSK, DataType.REQUEST_RESP, DataType.RESOLVE_INIT_PSK,
     DataType.RESOLVE_RESP],
    ids=lambda d: d.name,
)  # fmt: skip
def test_ticket_request_and_resolve_messages_with_crypto_sessions_are_refused(
    data_type: DataType,
) -> None:
    """RFC 6043 4.2.1.1 / 4.2.3.1: 'As Crypto Sessions (CSs) SHALL NOT be handled, the #CS MUST be
    set to '0' and the CS ID map type SHALL be the "Empty map" as defined in [RFC4563]'; 4.2.1.5 /
    4.2.3.5: the response's '#CS, and CS ID map type fields ... SHALL be identical'."""
    msg = decode(_raw(data_type))
    check_header_rules(msg)
    maps = ((c.GenericIdMap((c.GenericIdEntry.srtp(1, 5),)), 9),
            (c.SrtpIdMap((c.SrtpIdEntry(0, 5, 0),)), 9), (c.EmptyMap(2), 8))  # fmt: skip
    for cs_map, offset in maps:
        bad = decode(encode(Message(dataclasses.replace(msg.header, cs_map=cs_map), msg.payloads)))
        with pytest.raises(MikeyError) as exc:
            check_header_rules(bad)
        assert (exc.value.err, exc.value.offset) == (ErrNo.UNSPECIFIED, offset)


@pytest.mark.parametrize("data_type", [DataType.TRANSFER_INIT, DataType.TRANSFER_RESP])
def test_ticket_transfer_with_the_srtp_id_map_is_refused(data_type: DataType) -> None:
    """RFC 6043 6.1: 'In the Ticket Transfer exchange the new GENERIC-ID map type ... SHOULD be
    used.  The map type SRTP-ID SHALL NOT be used.'  (The Empty map is allowed: SHOULD.)"""
    msg = decode(_raw(data_type))
    check_header_rules(msg)
    for allowed in (c.EmptyMap(), c.EmptyMap(3)):
        check_header_rules(Message(dataclasses.replace(msg.header, cs_map=allowed), msg.payloads))
    srtp = c.SrtpIdMap((c.SrtpIdEntry(0, 0x1000, 0), c.SrtpIdEntry(0, 0x1001, 0)))
    bad = decode(encode(Message(dataclasses.replace(msg.header, cs_map=srtp), msg.payloads)))
    with pytest.raises(MikeyError, match="SRTP-ID") as exc:
        check_header_rules(bad)
    assert (exc.value.err, exc.value.offset) == (ErrNo.UNSPECIFIED, 9)


def _with_entries(data_type: DataType, *entries: c.GenericIdEntry) -> Message:
    msg = decode(_raw(data_type))
    header = dataclasses.replace(msg.header, cs_map=c.GenericIdMap(entries))
    return decode(encode(Message(header, msg.payloads)))


def test_transfer_resp_blocks_carry_one_policy_session_data_and_an_spi() -> None:
    """RFC 6043 6.1.1: '#P ... In response messages, #P SHALL always be exactly 1'; 'Session Data
    ... MAY be omitted in the initial message (length = 0), but it MUST be provided in the
    response message'; 'SPI MAY be omitted in the initial message (length = 0), but it MUST be
    provided in the response message.'"""
    good = c.GenericIdEntry.srtp(1, 0x1000, policy_nos=(0,), spi=b"\x01")
    check_header_rules(_with_entries(DataType.TRANSFER_RESP, good))
    first = 10 + 3 + 1 + 2 + 4 + 1 + 1  # offset of the second block
    for bad, at, why in (
        (dataclasses.replace(good, policy_nos=()), first + 2, "#P SHALL be exactly 1"),
        (dataclasses.replace(good, policy_nos=(0, 1)), first + 2, "#P SHALL be exactly 1"),
        (dataclasses.replace(good, session_data=b""), first + 4, "Session Data and SPI"),
        (dataclasses.replace(good, spi=b""), first + 4, "Session Data and SPI"),
    ):
        bad = dataclasses.replace(bad, cs_id=2)
        with pytest.raises(MikeyError, match=why) as exc:
            check_header_rules(_with_entries(DataType.TRANSFER_RESP, good, bad))
        assert (exc.value.err, exc.value.offset) == (ErrNo.UNSPECIFIED, at)
    # the initial message may leave all three out
    check_header_rules(_with_entries(DataType.TRANSFER_INIT, c.GenericIdEntry(1)))


@pytest.mark.parametrize("data_type", [DataType.TRANSFER_INIT, DataType.TRANSFER_RESP])
def test_a_cs_id_named_twice_in_the_generic_id_map_is_refused(data_type: DataType) -> None:
    """RFC 6043 6.1.1: 'CS ID (8 bits): defines the CS ID to be used for the crypto session' - two
    blocks with one CS ID would give two crypto sessions the same keys."""
    e = c.GenericIdEntry.srtp(4, 0x1000, policy_nos=(0,), spi=b"\x01")
    with pytest.raises(MikeyError, match="CS ID 4 appears twice") as exc:
        check_header_rules(
            _with_entries(data_type, e, dataclasses.replace(e, session_data=b"1234"))
        )
    assert exc.value.offset == 10 + 3 + 1 + 2 + 4 + 1 + 1


def test_error_messages_have_no_header_rules_of_an_exchange() -> None:
    check_header_rules(decode(_raw(DataType.ERROR)))


# --- algorithm strength ---------------------------------------------------------------------------


def test_messages_mixing_256_bit_and_weaker_algorithms_are_refused() -> None:
    """RFC 6043 12.1: 'The 256-bit algorithms SHOULD be used together, and they SHALL NOT be mixed
    with algorithms using key sizes less than 256 bits.'"""
    strong = run(FORKING, prf=PrfFunc.PRF_HMAC_SHA_256)
    for raw in (*strong.all(), *run(FORKING).all()):
        check_algorithms(decode(raw))
    req = decode(strong.request_init)
    weak_v = c.Verification(MacAlg.HMAC_SHA_1_160, bytes(20))
    mixed = decode(encode(Message(req.header, (*req.payloads[:-1], weak_v))))
    with pytest.raises(MikeyError, match="V Auth alg") as exc:
        check_algorithms(mixed)
    assert (exc.value.err, exc.value.offset) == (ErrNo.INVALID_MAC, mixed.offsets[-1] + 1)
    tp_at = next(i for i, p in enumerate(req.payloads) if isinstance(p, c.TicketPolicy))
    weak_header = dataclasses.replace(req.header, prf_func=PrfFunc.MIKEY_1)
    mixed = decode(encode(Message(weak_header, req.payloads)))
    with pytest.raises(MikeyError, match="Ticket Policy PRF func") as exc:
        check_algorithms(mixed)
    assert (exc.value.err, exc.value.offset) == (ErrNo.INVALID_PRF, req.offsets[tp_at] + 5)
    resp = decode(strong.request_resp)
    at = next(i for i, p in enumerate(resp.payloads) if isinstance(p, c.Kemac))
    kemac = resp.payloads[at]
    assert isinstance(kemac, c.Kemac)
    for bad, err, offset in (
        (dataclasses.replace(kemac, encr_alg=EncrAlg.AES_CM_128), ErrNo.INVALID_EA, 1),
        (dataclasses.replace(kemac, encr_alg=EncrAlg.AES_KW_128), ErrNo.INVALID_EA, 1),
        (dataclasses.replace(kemac, mac_alg=MacAlg.HMAC_SHA_1_160, mac=bytes(20)),
         ErrNo.INVALID_MAC, 4 + len(kemac.encr_data)),
    ):  # fmt: skip
        payloads = (*resp.payloads[:at], bad, *resp.payloads[at + 1 :])
        with pytest.raises(MikeyError) as exc:
            check_algorithms(decode(encode(Message(resp.header, payloads))))
        assert (exc.value.err, exc.value.offset) == (err, resp.offsets[at] + offset)
    # NULL is no algorithm: a NULL KEMAC MAC and NULL encryption mix with anything
    nulls = dataclasses.replace(kemac, encr_alg=EncrAlg.NULL)
    check_algorithms(Message(resp.header, (*resp.payloads[:at], nulls, *resp.payloads[at + 1 :])))
    with pytest.raises(MikeyError) as exc:
        check_algorithms(Message(req.header, (*req.payloads[:-1], weak_v)))  # not received
    assert exc.value.offset == -1
