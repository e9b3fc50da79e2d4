"""The Xk refusal table at the core, against in-memory fakes of the ports: one test per attack,
no I/O (the gRPC tests in tests/xk keep the wiring). The attacker here holds key material or a
certificate: the initiator (MPKi, and MPKr with key forking), another resolver, a DF2 whose
warrant is for someone else, a compromised CSCF that feeds whatever bytes it likes."""

from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.core.errors import (
    AuditUnavailable,
    CallerError,
    InvalidRequest,
    MalformedMessage,
    MessageAuthFailed,
    NoActiveWarrant,
    RoleNotAllowed,
    TargetMismatch,
    TicketExpired,
)
from firmware.core.fields import MAX_FIELD_BYTES
from firmware.core.ports import Caller, Role
from firmware.core.xk import TargetRole
from firmware.mikey.codec import GenericIdEntry, Timestamp
from firmware.mikey.message import Message, decode, encode
from firmware.mikey.transfer import fork_modifier
from tests.calls import ALICE, BOB
from tests.core.fakes import ADMIN, DF2, caller
from tests.core.world import CAROL, NOW, SKEW, World, keys_of, session

INITIATOR, RESPONDER = TargetRole.INITIATOR, TargetRole.RESPONDER
HOUR = 3600.0


@pytest.fixture
def world() -> World:
    return World()


# --- the responder is bound by the KMS's own record --------------------------------------------


@pytest.mark.parametrize("forking", [True, False])
def test_refuses_an_initiator_forged_transfer_resp_naming_a_responder_who_never_resolved(
    world: World, forking: bool
) -> None:
    """Alice holds MPKi (and MPKr): she can make a TRANSFER_RESP that verifies and names carol,
    an allowed responder who never resolved the ticket. Only the KMS's record can tell."""
    offer = world.offer(forking=forking, responders=(BOB, CAROL))
    world.answer(offer, BOB)
    forged = world.forged_answer(offer, naming=CAROL)
    liid = world.warrant(CAROL)
    with pytest.raises(TargetMismatch, match="no record"):
        world.get_keys(offer.transfer_init, CAROL, RESPONDER, liid, forged)


def test_refuses_an_initiator_forged_transfer_resp_with_a_randrkms_the_kms_never_gave(
    world: World,
) -> None:
    """Carol did resolve, but alice forges carol's answer with a RANDRkms of her own: the forked
    keys would be keys nobody uses, under carol's warrant."""
    offer = world.offer(forking=True, responders=(BOB, CAROL))
    world.answer(offer, CAROL)
    forged = world.forged_answer(offer, naming=CAROL, rand_kms=os.urandom(16))
    liid = world.warrant(CAROL)
    with pytest.raises(TargetMismatch, match="RANDRkms"):
        world.get_keys(offer.transfer_init, CAROL, RESPONDER, liid, forged)


@pytest.mark.parametrize("forking", [True, False])
def test_refuses_one_responders_genuine_answer_presented_for_the_other(
    world: World, forking: bool
) -> None:
    """Bob and carol both resolved; carol's genuine TRANSFER_RESP must not release keys under a
    warrant for bob."""
    offer = world.offer(forking=forking, responders=(BOB, CAROL))
    world.answer(offer, BOB)
    carols = world.answer(offer, CAROL)
    liid = world.warrant(BOB)
    with pytest.raises(TargetMismatch):
        world.get_keys(offer.transfer_init, BOB, RESPONDER, liid, carols.transfer_resp)


@pytest.mark.parametrize("forking", [True, False])
def test_each_responder_with_its_own_answer_gets_its_own_keys(world: World, forking: bool) -> None:
    offer = world.offer(forking=forking, responders=(BOB, CAROL))
    answers = {who: world.answer(offer, who) for who in (BOB, CAROL)}
    for who, answer in answers.items():
        liid = world.warrant(who, liid=f"LIID-{who}")
        released = world.get_keys(offer.transfer_init, who, RESPONDER, liid, answer.transfer_resp)
        assert keys_of(released) == session(answer.keys)


@pytest.mark.parametrize("forking", [True, False])
def test_a_responder_without_transfer_resp_is_bound_by_the_record_alone(
    world: World, forking: bool
) -> None:
    offer = world.offer(forking=forking)
    answer = world.answer(offer, BOB)
    released = world.get_keys(offer.transfer_init, BOB, RESPONDER, world.warrant(BOB))
    assert keys_of(released) == session(answer.keys)


def test_refuses_a_responder_role_for_an_allowed_responder_who_never_resolved(
    world: World,
) -> None:
    offer = world.offer(forking=False, responders=(BOB, CAROL))
    with pytest.raises(TargetMismatch, match="no record"):
        world.get_keys(offer.transfer_init, CAROL, RESPONDER, world.warrant(CAROL))


def test_refuses_a_transfer_resp_naming_nobody_when_the_ticket_allows_several(
    world: World,
) -> None:
    """Without forking, an answer that names no IDRr could be anybody's who holds MPKi."""
    offer = world.offer(forking=False, responders=(BOB, CAROL))
    world.answer(offer, BOB)
    nameless = world.forged_answer(offer, naming=None)
    with pytest.raises(TargetMismatch, match="does not name"):
        world.get_keys(offer.transfer_init, BOB, RESPONDER, world.warrant(BOB), nameless)


def test_an_unnamed_transfer_resp_names_the_only_responder_the_ticket_allows(
    world: World,
) -> None:
    """RFC 6043 5.5 / spec Q6, the other reading: an identity the message omits is the ticket's."""
    offer = world.offer(forking=False, responders=(BOB,))
    answer = world.answer(offer, BOB)
    nameless = world.forged_answer(offer, naming=None)
    released = world.get_keys(offer.transfer_init, BOB, RESPONDER, world.warrant(BOB), nameless)
    assert [s.key for s in released.sessions] == [k.tek for k in answer.keys]


def test_the_initiator_is_the_ticket_idri_whatever_the_transfer_init_says(world: World) -> None:
    offer = world.offer(forking=False)
    answer = world.answer(offer, BOB)
    liid = world.warrant(ALICE)
    released = world.get_keys(offer.transfer_init, ALICE, INITIATOR, liid, answer.transfer_resp)
    assert keys_of(released) == session(answer.keys)
    with pytest.raises(TargetMismatch):
        world.get_keys(offer.transfer_init, BOB, INITIATOR, world.warrant(BOB, liid="L-b"))


def test_refuses_a_forked_initiator_release_with_a_transfer_resp_no_resolution_matches(
    world: World,
) -> None:
    """With forking the initiator's keys depend on who answered: a made-up answer must not
    release keys nobody uses, even for the initiator as target."""
    offer = world.offer(forking=True)
    world.answer(offer, BOB)
    forged = world.forged_answer(offer, naming=BOB, rand_kms=os.urandom(16))
    with pytest.raises(TargetMismatch):
        world.get_keys(offer.transfer_init, ALICE, INITIATOR, world.warrant(ALICE), forged)


def test_refuses_an_initiator_release_whose_transfer_resp_names_another_resolver_than_its_record(
    world: World,
) -> None:
    """Bob's RANDRkms travels in clear in his TRANSFER_RESP: alice can reuse it in an answer that
    names carol. The record it matches is bob's, so the answer's name must be bob."""
    offer = world.offer(forking=True, responders=(BOB, CAROL))
    bobs = world.answer(offer, BOB)
    _, bobs_rand_kms = fork_modifier(decode(bobs.transfer_resp))
    forged = world.forged_answer(offer, naming=CAROL, rand_kms=bobs_rand_kms)
    with pytest.raises(TargetMismatch):
        world.get_keys(offer.transfer_init, ALICE, INITIATOR, world.warrant(ALICE), forged)


def test_refuses_a_transfer_init_naming_another_initiator_than_the_ticket(world: World) -> None:
    offer = world.offer(forking=False)
    renamed = world.transfer_init_as(offer, CAROL)
    with pytest.raises(TargetMismatch, match="another initiator"):
        world.get_keys(renamed, ALICE, INITIATOR, world.warrant(ALICE))


def test_the_initiator_target_is_the_ticket_idri_even_when_the_transfer_init_agrees(
    world: World,
) -> None:
    """Alice re-MACs her offer naming bob as initiator: the ticket's IDRi (alice, authenticated
    by her PSK at request time) still decides."""
    offer = world.offer(forking=False)
    renamed = world.transfer_init_as(offer, BOB)
    with pytest.raises(TargetMismatch, match="initiator"):
        world.get_keys(renamed, BOB, INITIATOR, world.warrant(BOB))


def test_refuses_a_responder_the_ticket_does_not_allow_even_with_a_record(world: World) -> None:
    """A planted (or stale) resolution record cannot widen the ticket's IDRr."""
    offer = world.offer(forking=False, responders=(BOB,))
    answer = world.answer(offer, BOB)
    record = world.store.resolved[-1]
    world.store.add_resolution(dataclasses.replace(record, responder=CAROL))
    with pytest.raises(TargetMismatch, match="does not allow"):
        world.get_keys(
            offer.transfer_init, CAROL, RESPONDER, world.warrant(CAROL), answer.transfer_resp
        )


# --- warrant and session time ------------------------------------------------------------------


def test_refuses_a_session_whose_ticket_ended_before_the_warrant_began(world: World) -> None:
    offer = world.offer(forking=False)
    world.answer(offer, BOB)
    liid = world.warrant(BOB, valid_from=NOW + 1.5 * HOUR, valid_until=NOW + 10 * HOUR)
    world.clock.now = NOW + 2 * HOUR  # the warrant is active, the ticket (1 h) long over
    with pytest.raises((TicketExpired, NoActiveWarrant)):
        world.get_keys(offer.transfer_init, BOB, RESPONDER, liid)


def test_the_warrant_window_refuses_a_ticket_that_ended_before_the_warrant_by_itself(
    world: World,
) -> None:
    """The overlap rule is a second line behind TICKET_EXPIRED: checked on its own here."""
    offer = world.offer(forking=False)
    liid = world.warrant(BOB, valid_from=NOW + 2 * HOUR, valid_until=NOW + 10 * HOUR)
    warrant = world.store.warrants[liid]
    init = decode(offer.transfer_init)
    with pytest.raises(NoActiveWarrant, match="ended before"):
        world.release._check_overlap(warrant, NOW + HOUR, init, NOW + 3 * HOUR)
    world.release._check_overlap(warrant, NOW + 2.5 * HOUR, init, NOW + 3 * HOUR)
    # a ticket ending the instant the warrant begins still overlaps it (both bounds inclusive)
    world.release._check_overlap(warrant, warrant.valid_from, init, NOW + 3 * HOUR)


@pytest.mark.parametrize("moved", [-30.0, HOUR + 30])
def test_refuses_a_ticket_outside_its_validity(world: World, moved: float) -> None:
    offer = world.offer(forking=False)
    liid = world.warrant(ALICE, valid_from=NOW - HOUR, valid_until=NOW + 10 * HOUR)
    world.clock.now = NOW + moved
    with pytest.raises(TicketExpired):
        world.get_keys(offer.transfer_init, ALICE, INITIATOR, liid)


def test_a_ticket_is_valid_from_its_start_to_its_end_inclusive(world: World) -> None:
    """[TRs, TRe] as RFC 6043 5.1.1 puts it, the same bounds RESOLVE_INIT keeps."""
    from firmware.core.ours import open_ours, validity
    from tests.calls import KMS

    offer = world.offer(forking=False)
    start, end = validity(open_ours(decode(offer.transfer_init), world.vault, KMS, world.store))
    assert start is not None and end is not None and start < end
    liid = world.warrant(ALICE, valid_from=start - HOUR, valid_until=end + HOUR)
    for now, valid in ((start, True), (end, True), (start - 0.5, False), (end + 0.5, False)):
        world.clock.now = now
        if valid:
            assert world.get_keys(offer.transfer_init, ALICE, INITIATOR, liid).sessions
        else:
            with pytest.raises(TicketExpired):
                world.get_keys(offer.transfer_init, ALICE, INITIATOR, liid)


def test_releases_a_session_already_running_when_the_warrant_starts(world: World) -> None:
    """TS 33.107 7A.7.5: interception may start mid-session."""
    offer = world.offer(forking=False)
    answer = world.answer(offer, BOB)
    world.clock.now = NOW + 600
    liid = world.warrant(BOB, valid_from=NOW + 300, valid_until=NOW + HOUR)
    released = world.get_keys(offer.transfer_init, BOB, RESPONDER, liid)
    assert keys_of(released) == session(answer.keys)


def test_refuses_a_transfer_init_stamped_after_the_warrant_ended(world: World) -> None:
    liid = world.warrant(ALICE, valid_from=NOW - HOUR, valid_until=NOW + 30)
    offer = world.offer(forking=False, sent_at=NOW + 45)  # within the skew, after the end
    with pytest.raises(NoActiveWarrant, match="after the warrant"):
        world.get_keys(offer.transfer_init, ALICE, INITIATOR, liid)


def test_refuses_a_transfer_init_stamped_beyond_the_clock_skew_ahead(world: World) -> None:
    liid = world.warrant(ALICE)
    offer = world.offer(forking=False, sent_at=NOW + SKEW + 5)
    with pytest.raises(NoActiveWarrant, match="future"):
        world.get_keys(offer.transfer_init, ALICE, INITIATOR, liid)


def test_a_transfer_init_stamped_at_the_bounds_is_released(world: World) -> None:
    """Both bounds are inclusive: stamped exactly the clock skew ahead, or exactly at the
    warrant's end, is still within them."""
    liid = world.warrant(ALICE, valid_from=NOW - HOUR, valid_until=NOW + SKEW / 2)
    at_end = world.offer(forking=False, sent_at=NOW + SKEW / 2)
    assert world.get_keys(at_end.transfer_init, ALICE, INITIATOR, liid).sessions
    liid = world.warrant(ALICE, liid="LIID-2")
    ahead = world.offer(forking=False, sent_at=NOW + SKEW)
    assert world.get_keys(ahead.transfer_init, ALICE, INITIATOR, liid).sessions


def test_refuses_when_the_warrant_is_not_active_now(world: World) -> None:
    offer = world.offer(forking=False)
    liid = world.warrant(ALICE, valid_from=NOW + 10, valid_until=NOW + HOUR)
    with pytest.raises(NoActiveWarrant):
        world.get_keys(offer.transfer_init, ALICE, INITIATOR, liid)


# --- the caller and its certificate identities ---------------------------------------------------


def test_refuses_a_caller_without_the_df2_role_in_the_core_too(world: World) -> None:
    """Second line behind the api's role check."""
    offer = world.offer(forking=False)
    liid = world.warrant(ALICE, df2=("admin.li.example.net",))
    with pytest.raises(RoleNotAllowed):
        world.get_keys(offer.transfer_init, ALICE, INITIATOR, liid, caller=ADMIN)


def test_a_warrant_matches_only_the_identity_that_holds_the_df2_role(world: World) -> None:
    """The certificate also carries uri:urn:other, which holds no role: a warrant naming it
    does not name this DF2."""
    offer = world.offer(forking=False)
    two = Caller(
        ("dns:df2.li.example.net", "uri:urn:other"),
        ((Role.DF2, ("dns:df2.li.example.net",)),),
        "fp",
        "TLSv1.3",
    )
    liid = world.warrant(ALICE, df2=("urn:other",))
    with pytest.raises(NoActiveWarrant):
        world.get_keys(offer.transfer_init, ALICE, INITIATOR, liid, caller=two)
    typed = world.warrant(ALICE, df2=("dns:df2.li.example.net",), liid="L-typed")
    assert world.get_keys(offer.transfer_init, ALICE, INITIATOR, typed, caller=two).sessions


def test_a_typed_warrant_entry_does_not_match_another_san_type(world: World) -> None:
    offer = world.offer(forking=False)
    uri_holder = caller("uri:df2.li.example.net", roles=(Role.DF2,))
    liid = world.warrant(ALICE, df2=("dns:df2.li.example.net",))
    with pytest.raises(NoActiveWarrant):
        world.get_keys(offer.transfer_init, ALICE, INITIATOR, liid, caller=uri_holder)


# --- fields and malformed key management data ---------------------------------------------


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("liid", "L" * (MAX_FIELD_BYTES + 1)),
        ("liid", "LIID-1\nforged"),
        ("liid", ""),
        ("correlation_id", "c" * (MAX_FIELD_BYTES + 1)),
        ("correlation_id", "corr\x00"),
        ("target", "sip:alice@ims.example.net\r\n"),
        ("target", "sip:" + "a" * MAX_FIELD_BYTES + "@x.net"),
    ],
)
def test_refuses_oversized_or_control_character_fields_before_anything(
    world: World, field_name: str, value: str
) -> None:
    offer = world.offer(forking=False)
    world.warrant(ALICE)
    records = len(world.audit.records)
    kw = {"liid": "LIID-1", "correlation_id": "corr", "target": ALICE} | {field_name: value}
    with pytest.raises(InvalidRequest):
        world.get_keys(
            offer.transfer_init,
            kw["target"],
            INITIATOR,
            liid=kw["liid"],
            correlation_id=kw["correlation_id"],
        )
    assert len(world.audit.records) == records  # nothing written by the core


@pytest.mark.parametrize(("field_name", "named"), [("liid", "liid"), ("target", "target_identity")])
def test_refuses_a_missing_liid_or_target_naming_it(
    world: World, field_name: str, named: str
) -> None:
    offer = world.offer(forking=False)
    kw = {"liid": world.warrant(ALICE), "target": ALICE} | {field_name: ""}
    with pytest.raises(InvalidRequest, match=f"^{named} is required$"):
        world.get_keys(offer.transfer_init, kw["target"], INITIATOR, liid=kw["liid"])


@pytest.mark.parametrize("which", ["Vi", "Vr"])
def test_refuses_initiator_data_altered_before_a_responder_answered_it(
    world: World, which: str
) -> None:
    """With key forking V is computed over zeroed Initiator Data (RFC 6043 4.2.3.6), so Vi and
    Vr can be altered without breaking V; a responder (who holds MPKr', not MPKr) can then answer
    the altered TRANSFER_INIT with a TRANSFER_RESP that verifies. Only the Vi = V and Vr
    (unforked MPKr) checks see it: the key management data is not what the initiator sent."""
    from firmware.mikey.codec import Ticket, TpFlags
    from tests.calls import t_at

    offer = world.offer(forking=True)
    ticket = decode(offer.transfer_init).require(Ticket)
    assert ticket.policy.flags & TpFlags.I and ticket.initiator_data is not None
    vi, vr = ticket.initiator_data
    mac = vi.mac if which == "Vi" else vr.mac
    at = offer.transfer_init.index(mac)  # Vi: its first copy, inside the TICKET (V is last)
    assert at + len(mac) < len(offer.transfer_init) - len(vi.mac)
    altered = bytearray(offer.transfer_init)
    altered[at] ^= 0x01
    bob = world.answer(offer, BOB).responder
    bob.init = decode(bytes(altered))
    resp = bob.transfer_resp(t=t_at(world.clock.now), rand_r=os.urandom(32))
    liid = world.warrant(BOB)
    with pytest.raises(MessageAuthFailed):
        world.get_keys(bytes(altered), BOB, RESPONDER, liid, resp)
    bob.init = decode(offer.transfer_init)
    honest = bob.transfer_resp(t=t_at(world.clock.now), rand_r=os.urandom(32))
    assert world.get_keys(offer.transfer_init, BOB, RESPONDER, liid, honest).sessions


def test_refuses_an_initiator_whose_vi_is_not_her_v_though_her_vr_verifies(world: World) -> None:
    """The initiator holds MPKr: she can sign Initiator Data whose Vi is not the TRANSFER_INIT's
    V with a Vr that verifies; RFC 6043 4.2.3.6 requires Vi = V, and only that check sees it."""
    from firmware.mikey.codec import Ticket, Verification
    from firmware.mikey.crypto import compute_mac, vr_auth_key
    from firmware.mikey.wire import serialize_nested
    from tests.calls import t_at

    offer = world.offer(forking=True)
    alice, msg = offer.alice, decode(offer.transfer_init)
    ticket, v = msg.require(Ticket), msg.payloads[-1]
    assert isinstance(v, Verification) and alice.mpkr is not None
    other_vi = Verification(v.mac_alg, bytes(b ^ 0xFF for b in v.mac))
    out = bytearray()
    serialize_nested(out, (other_vi, other_vi), "Initiator Data")
    signed = bytes(out[2 : len(out) - len(v.mac)])
    key = vr_auth_key(ticket.policy.prf_func, alice.mpkr, v.mac_alg)
    vr = Verification(v.mac_alg, compute_mac(v.mac_alg, key, signed))
    forged_ticket = dataclasses.replace(ticket, initiator_data=(other_vi, vr))
    payloads = tuple(forged_ticket if p is ticket else p for p in msg.payloads)
    forged = encode(Message(msg.header, payloads))
    bob = world.answer(offer, BOB).responder
    bob.init = decode(forged)
    resp = bob.transfer_resp(t=t_at(world.clock.now), rand_r=os.urandom(32))
    with pytest.raises(MessageAuthFailed):
        world.get_keys(forged, BOB, RESPONDER, world.warrant(BOB), resp)


def test_refuses_key_data_whose_sessions_cannot_be_derived_as_malformed(world: World) -> None:
    """The initiator signs a TRANSFER_INIT whose CS map names a security policy no SP payload
    holds: it verifies, but no session key follows from it. Refused as malformed key data (what
    raises the alarm), never an internal error, and nothing is released."""
    from tests.calls import t_at

    offer = world.offer(forking=False)
    entry = dataclasses.replace(GenericIdEntry.srtp(1, 0x1000), policy_nos=(7,))
    init = offer.alice.transfer_init(
        csb_id=5, t=t_at(world.clock.now), rand_i=os.urandom(32), sessions=[entry],
        responder=BOB.encode(),
    )  # fmt: skip
    liid = world.warrant(ALICE)
    with pytest.raises(MalformedMessage, match="cannot derive session keys: no SP payload"):
        world.get_keys(init, ALICE, INITIATOR, liid)
    assert "KEY_RELEASE" not in world.audit.events()


def test_refuses_a_missing_target_role(world: World) -> None:
    offer = world.offer(forking=False)
    with pytest.raises(InvalidRequest):
        world.get_keys(offer.transfer_init, ALICE, None, world.warrant(ALICE))


def _transfer_init_without_t(transfer_init: bytes) -> bytes:
    msg = decode(transfer_init)
    return encode(
        Message(msg.header, tuple(p for p in msg.payloads if not isinstance(p, Timestamp)))
    )


@pytest.mark.parametrize(
    "slot",
    ["resolve-init", "garbage", "trailing-bytes", "no-t", "transfer-resp-in-init-slot", "empty"],
)
def test_refuses_malformed_data_in_the_transfer_init_slot(world: World, slot: str) -> None:
    offer = world.offer(forking=False)
    answer = world.answer(offer, BOB)
    data = {
        "resolve-init": lambda: world.answer(world.offer(), BOB).responder._resolve.raw,  # type: ignore[union-attr]
        "garbage": lambda: os.urandom(64),
        "trailing-bytes": lambda: offer.transfer_init + b"\x00",
        "no-t": lambda: _transfer_init_without_t(offer.transfer_init),
        "transfer-resp-in-init-slot": lambda: answer.transfer_resp,
        "empty": lambda: b"",
    }[slot]()
    with pytest.raises((MalformedMessage, MessageAuthFailed)):
        world.get_keys(data, ALICE, INITIATOR, world.warrant(ALICE))


@pytest.mark.parametrize("resp", [b"\x01\x0f\x00junk", os.urandom(40), b"\x00"])
def test_refuses_a_garbage_transfer_resp_after_a_valid_transfer_init(
    world: World, resp: bytes
) -> None:
    offer = world.offer(forking=False)
    world.answer(offer, BOB)
    with pytest.raises(MalformedMessage):
        world.get_keys(offer.transfer_init, BOB, RESPONDER, world.warrant(BOB), resp)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(init=st.binary(max_size=300), resp=st.binary(max_size=120))
def test_arbitrary_bytes_in_either_slot_are_refused_as_the_callers_fault(
    init: bytes, resp: bytes
) -> None:
    """A compromised CSCF feeds anything: the answer is always a CallerError (alarm + audit at
    the api), never another exception that would escape as INTERNAL."""
    world = _WORLD
    with pytest.raises(CallerError):
        world.get_keys(init, ALICE, INITIATOR, "LIID-h", resp)


_WORLD = World()
_WORLD.warrant(ALICE, liid="LIID-h")


# --- the release record ---------------------------------------------------------------------


def test_a_release_whose_record_cannot_be_written_releases_nothing(world: World) -> None:
    offer = world.offer(forking=False)
    liid = world.warrant(ALICE)
    world.audit.fail_next()
    with pytest.raises(AuditUnavailable):
        world.get_keys(offer.transfer_init, ALICE, INITIATOR, liid)
    assert world.audit.events()[-1] != "KEY_RELEASE"


def test_released_keys_and_the_request_show_no_key_material_when_printed(world: World) -> None:
    """A log line or a traceback that prints the request or the answer must not carry session
    keys, salts or the MIKEY messages they come from."""
    from firmware.core.xk import GetKeysRequest

    offer = world.offer(forking=False, responders=(BOB,))
    answer = world.answer(offer, BOB).transfer_resp
    liid = world.warrant(ALICE)
    released = world.get_keys(offer.transfer_init, ALICE, INITIATOR, liid, answer)
    request = GetKeysRequest(ALICE, INITIATOR, offer.transfer_init, answer, liid, "c")
    text = repr(released) + str(released) + repr(request) + str(request)
    assert released.sessions and answer
    secrets = [offer.transfer_init, answer]
    secrets += [b for s in released.sessions for b in (s.key, s.salt)]
    for secret in secrets:
        assert repr(secret) not in text and secret.hex() not in text
        assert repr(secret)[2:-1][:24] not in text


def test_the_release_record_names_every_identity_of_the_caller_and_no_key(world: World) -> None:
    offer = world.offer(forking=False)
    released = world.get_keys(offer.transfer_init, ALICE, INITIATOR, world.warrant(ALICE))
    record = world.audit.records[-1]
    assert record.event == "KEY_RELEASE"
    assert record.fields["caller"] == list(DF2.identities)
    assert record.fields["fingerprint"] == DF2.fingerprint
    text = repr(record.fields)
    for s in released.sessions:
        assert s.key.hex() not in text and s.salt.hex() not in text
