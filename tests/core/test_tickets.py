"""TicketCore in-process with the fake vault and a real SQLite store (gRPC tests cover the rest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware.core.admin import Admin
from firmware.core.errors import MalformedMessage, NotAuthenticated
from firmware.core.freshness import ReplayCache
from firmware.core.tickets import TicketCore, TicketSettings
from firmware.mikey.constants import DataType, ErrNo
from firmware.mikey.message import decode
from firmware.mikey.prf import PrfFunc
from firmware.store.sqlite import SqliteStore
from hsm.fake import FakeVault
from tests.calls import ALICE, ALICE_PSK, BOB, BOB_PSK, full_call, requested_policy, t_at
from tests.core.fakes import OPERATOR, MemoryAudit

NOW = 1_900_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def node(tmp_path: Path) -> tuple[TicketCore, SqliteStore, Clock]:
    vault = FakeVault()
    store = SqliteStore(tmp_path / "s.sqlite")
    clock = Clock()
    admin = Admin(vault, store, MemoryAudit(), clock, 86400, 60)
    admin.put_user(OPERATOR, ALICE, ["tel:+15550100"], ALICE_PSK, b"")
    admin.put_user(OPERATOR, BOB, [], BOB_PSK, b"")
    core = TicketCore(
        vault, store, ReplayCache(60, NOW - 100), TicketSettings("sip:kms.ims.example.net"), clock
    )
    return core, store, clock


@pytest.mark.parametrize("prf", list(PrfFunc))
@pytest.mark.parametrize("forking", [True, False])
def test_both_ues_derive_the_same_keys(node, prf: PrfFunc, forking: bool) -> None:
    core, _, _ = node
    core.settings = TicketSettings("sip:kms.ims.example.net", key_forking=False)
    call = full_call(core.exchange, NOW, prf=prf, forking=forking, sessions=2)
    assert [(k.cs_id, k.tek, k.salt) for k in call.alice_keys] == [
        (k.cs_id, k.tek, k.salt) for k in call.bob_keys
    ]
    assert len(call.alice_keys) == 2
    assert decode(call.request_resp).header.data_type == DataType.REQUEST_RESP


def test_refuses_a_replayed_request(node) -> None:
    core, _, _ = node
    call = full_call(core.exchange, NOW)
    with pytest.raises(NotAuthenticated) as info:
        core.exchange(call.request_init)
    assert info.value.mikey_error == ErrNo.INVALID_TS


def test_refuses_garbage_as_malformed(node) -> None:
    core, _, _ = node
    with pytest.raises(MalformedMessage):
        core.exchange(b"\x01\x0b\x00")


def test_a_requested_kemac_template_is_replaced_and_flagged_with_k(node) -> None:
    from firmware.mikey.codec import Kemac, KeyData, Ticket, TpFlags, serialize_key_data
    from firmware.mikey.constants import EncrAlg, KeyDataType
    from tests.calls import requested_policy, t_at, ues

    core, _, _ = node
    alice = ues(PrfFunc.MIKEY_1)[0]
    template = Kemac(EncrAlg.NULL, serialize_key_data([KeyData(KeyDataType.TEK, bytes(16))]))
    plain = requested_policy(PrfFunc.MIKEY_1, True, [BOB.encode()])
    wanted = type(plain)(
        plain.ticket_type,
        plain.subtype,
        plain.version,
        plain.prf_func,
        # exactly the flags the KMS grants, so only the replaced template can set K
        TpFlags.D | TpFlags.E | TpFlags.F | TpFlags.H | TpFlags.I | TpFlags.N | TpFlags.O,
        (template, *(plain.payloads or ())),
    )
    req = alice.request_init(csb_id=9, t=t_at(NOW), rand_i=bytes(32), policy=wanted)
    granted = decode(core.exchange(req)).require(Ticket).policy
    assert granted.flags & TpFlags.K
    assert not granted.find_all(Kemac)
    plain_req = alice.request_init(
        csb_id=10,
        t=t_at(NOW),
        rand_i=bytes(range(32)),
        policy=type(plain)(1, 1, 1, PrfFunc.MIKEY_1, wanted.flags, plain.payloads),
    )
    # RFC 6043 6.10: the KMS added TRs/TRe, IDRkms and IDRi: the granted policy differs, K
    assert decode(core.exchange(plain_req)).require(Ticket).policy.flags & TpFlags.K


def test_k_is_clear_only_when_the_kms_grants_exactly_what_was_asked(node) -> None:
    from firmware.mikey.codec import RoleIdentity, RoleTimestamp, Ticket, TicketPolicy, TpFlags
    from firmware.mikey.constants import IdRole, IdType, TsRole, TsType
    from tests.calls import KMS, ues

    core, _, _ = node
    alice = ues(PrfFunc.MIKEY_1)[0]
    flags = TpFlags.D | TpFlags.E | TpFlags.F | TpFlags.H | TpFlags.N | TpFlags.O
    exact = TicketPolicy(1, 1, 1, PrfFunc.MIKEY_1, flags, (
        RoleIdentity(IdRole.IDRkms, IdType.URI, KMS),
        RoleIdentity(IdRole.IDRi, IdType.URI, ALICE.encode()),
        RoleTimestamp(TsRole.TRs, TsType.NTP_UTC, t_at(NOW).value),
        RoleTimestamp(TsRole.TRe, TsType.NTP_UTC, t_at(NOW + 3600).value),
        RoleIdentity(IdRole.IDRr, IdType.URI, BOB.encode()),
    ))  # fmt: skip
    core.settings = TicketSettings("sip:kms.ims.example.net", key_forking=False)
    req = alice.request_init(csb_id=11, t=t_at(NOW), rand_i=bytes(range(32)), policy=exact)
    granted = decode(core.exchange(req)).require(Ticket).policy
    assert not granted.flags & TpFlags.K
    assert granted.payloads == exact.payloads


def test_never_grants_a_validity_wider_than_requested(node) -> None:
    """A later start and an earlier end than the defaults are kept (never widened)."""
    from firmware.core.ours import ts_unix
    from firmware.mikey.codec import RoleTimestamp, Ticket, TicketPolicy
    from firmware.mikey.constants import TsRole, TsType
    from tests.calls import ues

    core, _, _ = node
    alice = ues(PrfFunc.MIKEY_1)[0]
    plain = requested_policy(PrfFunc.MIKEY_1, False, [BOB.encode()])
    asked = TicketPolicy(1, 1, 1, PrfFunc.MIKEY_1, plain.flags, (
        RoleTimestamp(TsRole.TRs, TsType.NTP_UTC, t_at(NOW + 60).value),
        RoleTimestamp(TsRole.TRe, TsType.NTP_UTC, t_at(NOW + 600).value),
        *(plain.payloads or ()),
    ))  # fmt: skip
    req = alice.request_init(csb_id=12, t=t_at(NOW), rand_i=bytes(range(32)), policy=asked)
    granted = decode(core.exchange(req)).require(Ticket).policy
    trs, tre = granted.tr(TsRole.TRs), granted.tr(TsRole.TRe)
    assert trs is not None and tre is not None
    assert (ts_unix(trs), ts_unix(tre)) == (NOW + 60, NOW + 600)


def test_a_request_whose_rands_are_weaker_than_its_psk_gets_an_error_message(node) -> None:
    """RFC 6043 12.1: "the sum of the lengths of RANDRi and RANDRr MUST at least be equal to
    the size of the longest pre-shared key": a 16-byte RANDRi under alice's 32-byte PSK."""
    from firmware.mikey.constants import DataType, ErrNo
    from firmware.mikey.payloads import ErrorPayload
    from tests.calls import ues

    core, _, _ = node
    alice = ues(PrfFunc.MIKEY_1)[0]
    req = alice.request_init(
        csb_id=13, t=t_at(NOW), rand_i=bytes(range(16)),
        policy=requested_policy(PrfFunc.MIKEY_1, False, [BOB.encode()]),
    )  # fmt: skip
    answer = decode(core.exchange(req))
    assert answer.header.data_type == DataType.ERROR
    assert [e.err_no for e in answer.find_all(ErrorPayload)] == [ErrNo.UNSPECIFIED]


def test_an_unknown_user_costs_the_same_hsm_work_as_a_known_user_with_a_wrong_key(node) -> None:
    """No timing oracle for who is provisioned (issue: pre-authentication cost): an unknown
    identity is checked against a decoy with a wrapped random PSK, one PSK PRF like anybody."""
    from firmware.mikey.exchange import Initiator
    from tests.calls import KMS, requested_policy, t_at

    core, _, _ = node
    vault = core.vault

    def attempt(identity: str) -> list[str]:
        ue = Initiator(identity.encode(), bytes(32), KMS)
        data = ue.request_init(
            csb_id=1, t=t_at(NOW), rand_i=bytes(32),
            policy=requested_policy(PrfFunc.MIKEY_1, False, [BOB.encode()]),
        )  # fmt: skip
        before = len(vault.calls)
        with pytest.raises(NotAuthenticated):
            core.exchange(data)
        return vault.calls[before:]

    attempt("sip:nobody@ims.example.net")  # the first unknown caller makes the decoy
    assert attempt("sip:nobody@ims.example.net") == attempt(ALICE) == ["psk_prf"]


def test_the_decoy_never_authenticates_even_if_its_mac_verified(node, monkeypatch) -> None:
    """Second line: reaching the decoy is a refusal whatever the MAC check says."""
    from firmware.core import tickets
    from firmware.mikey.exchange import Initiator
    from tests.calls import KMS, requested_policy, t_at

    core, _, _ = node
    monkeypatch.setattr(tickets, "verify_initial_psk", lambda *a, **k: bytes(20))
    ue = Initiator(b"sip:nobody@ims.example.net", bytes(32), KMS)
    data = ue.request_init(
        csb_id=1, t=t_at(NOW), rand_i=bytes(32),
        policy=requested_policy(PrfFunc.MIKEY_1, False, [BOB.encode()]),
    )  # fmt: skip
    with pytest.raises(NotAuthenticated):
        core.exchange(data)


def test_the_identity_cache_is_bounded() -> None:
    from firmware.core.identity import canonical

    assert canonical.cache_info().maxsize is not None
    assert canonical.cache_info().maxsize <= 65536


@pytest.mark.parametrize("responders", [600, 1800])
def test_a_huge_unauthenticated_message_is_refused_before_any_hsm_work(
    node, responders: int
) -> None:
    """Pre-authentication cost cap (RFC 6043 12.3: no state, little work before authenticating):
    a well-formed REQUEST_INIT made huge (a Ticket Policy naming thousands of responders) is
    refused by its size before the user is looked up or the HSM is asked anything."""
    from tests.calls import requested_policy, t_at, ues

    core, _, _ = node
    alice = ues(PrfFunc.MIKEY_1)[0]
    names = [f"sip:r{i}@ims.example.net".encode() for i in range(responders)]
    data = alice.request_init(
        csb_id=1, t=t_at(NOW), rand_i=bytes(32),
        policy=requested_policy(PrfFunc.MIKEY_1, False, names),
    )  # fmt: skip
    assert len(data) > 16384
    before = len(core.vault.calls)
    with pytest.raises(MalformedMessage):
        core.exchange(data)
    assert core.vault.calls[before:] == []


def test_a_transport_bound_identity_must_be_the_idri_or_idrr_it_authenticated(node) -> None:
    core, _, _ = node
    as_alice = lambda data: core.exchange(data, frozenset({ALICE}))  # noqa: E731
    from firmware.mikey.errors import MikeyError

    with pytest.raises(MikeyError, match="not a RESOLVE_RESP"):  # bob's resolve as alice
        full_call(as_alice, NOW)
    answers = iter([frozenset({ALICE}), frozenset({BOB})])
    call = full_call(lambda data: core.exchange(data, next(answers)), NOW)
    assert call.alice_keys[0].tek == call.bob_keys[0].tek


def test_a_transport_that_authenticated_nobody_gets_err_invalid_id(node) -> None:
    from tests.calls import requested_policy, t_at, ues

    core, _, _ = node
    alice, _ = ues(PrfFunc.MIKEY_1)
    request = alice.request_init(
        csb_id=1,
        t=t_at(NOW),
        rand_i=bytes(16),
        policy=requested_policy(PrfFunc.MIKEY_1, True, [BOB.encode()]),
    )
    answer = decode(core.exchange(request, frozenset()))
    assert answer.header.data_type == DataType.ERROR
    assert [p.err_no for p in answer.payloads if type(p).__name__ == "ErrorPayload"] == [
        ErrNo.INVALID_ID
    ]


def test_a_user_whose_kek_version_was_destroyed_is_not_authenticated(node) -> None:
    """Destroying a KEK version retires the PSKs it wrapped: their users are refused as
    unauthenticated (ERR Auth failure), not answered and not an internal error."""
    from firmware.core.ports import KeyName
    from firmware.mikey.exchange import Initiator
    from tests.calls import KMS, requested_policy, t_at

    core, _, _ = node
    core.vault.create_version(KeyName.KEY_ENCRYPTION)
    core.vault.destroy_version(KeyName.KEY_ENCRYPTION, 1)
    ue = Initiator(ALICE.encode(), ALICE_PSK, KMS)
    data = ue.request_init(
        csb_id=1, t=t_at(NOW), rand_i=bytes(32),
        policy=requested_policy(PrfFunc.MIKEY_1, False, [BOB.encode()]),
    )  # fmt: skip
    with pytest.raises(NotAuthenticated) as refused:
        core.exchange(data)
    assert refused.value.mikey_error == ErrNo.AUTH_FAILURE


def test_refuses_a_request_mixing_256_bit_and_weaker_algorithms_before_answering(node) -> None:
    """RFC 6043 12.1: the 256-bit algorithms "SHALL NOT be mixed" with weaker ones. Alice's PRF
    is HMAC-SHA-256 and her V is HMAC-SHA-1: it verifies, and is still refused (INVALID_MAC)."""
    from firmware.mikey.constants import MacAlg
    from tests.calls import ues

    core, _, _ = node
    alice = ues(PrfFunc.PRF_HMAC_SHA_256)[0]
    alice.mac_alg = MacAlg.HMAC_SHA_1_160  # past the UE's own strength check
    req = alice.request_init(
        csb_id=14, t=t_at(NOW), rand_i=bytes(range(32)),
        policy=requested_policy(PrfFunc.PRF_HMAC_SHA_256, False, [BOB.encode()]),
    )  # fmt: skip
    with pytest.raises(MalformedMessage, match="V Auth alg is weaker than 256-bit") as info:
        core.exchange(req)
    assert info.value.mikey_error == ErrNo.INVALID_MAC


def _ask(core: TicketCore, alice: object, t: object) -> object:
    """alice's REQUEST_INIT stamped `t`, answered by `core` (decoded)."""
    req = alice.request_init(  # type: ignore[attr-defined]
        csb_id=21, t=t, rand_i=bytes(range(32)),
        policy=requested_policy(PrfFunc.MIKEY_1, False, [BOB.encode()]),
    )  # fmt: skip
    return decode(core.exchange(req))


def test_refuses_a_counter_timestamp_that_does_not_increase(node) -> None:
    """RFC 3830 5.4: a COUNTER is replay-protected by increasing; the KMS keeps each user's."""
    from firmware.mikey.codec import Timestamp
    from firmware.mikey.constants import TsType
    from firmware.mikey.exchange import Initiator

    core, _, _ = node
    alice = Initiator(ALICE.encode(), ALICE_PSK, b"sip:kms.ims.example.net")

    def counter(n: int) -> Timestamp:
        return Timestamp(TsType.COUNTER, n.to_bytes(4, "big"))

    assert _ask(core, alice, counter(5)).header.data_type == DataType.REQUEST_RESP
    for stale in (5, 4):
        with pytest.raises(NotAuthenticated, match="COUNTER did not increase") as info:
            _ask(core, alice, counter(stale))
        assert info.value.mikey_error == ErrNo.INVALID_TS
    assert _ask(core, alice, counter(6)).header.data_type == DataType.REQUEST_RESP


@pytest.mark.parametrize("kms", [b"sip:other-kms.ims.example.net", b"\xff\xfe"])
def test_refuses_a_request_whose_idrkms_is_not_this_kms(node, kms: bytes) -> None:
    """TS 33.328: IDRkms names the KMS asked; another (or no parseable) one gets INVALID_ID."""
    from firmware.mikey.exchange import Initiator
    from firmware.mikey.payloads import ErrorPayload

    core, _, _ = node
    answer = _ask(core, Initiator(ALICE.encode(), ALICE_PSK, kms), t_at(NOW))
    assert answer.header.data_type == DataType.ERROR  # type: ignore[attr-defined]
    errors = [e.err_no for e in answer.find_all(ErrorPayload)]  # type: ignore[attr-defined]
    assert errors == [ErrNo.INVALID_ID]


def test_a_user_named_by_psk_id_whose_idri_does_not_parse_is_refused_invalid_id(
    node, tmp_path: Path
) -> None:
    """The PSK id finds the user and V verifies; an IDRi that is no identity at all is still
    not one of hers (TS 33.328 6.2.3.5)."""
    from firmware.mikey.exchange import Initiator
    from firmware.mikey.payloads import ErrorPayload

    core, store, clock = node
    carol_psk = bytes(range(100, 132))
    Admin(core.vault, store, MemoryAudit(), clock, 86400, 60).put_user(
        OPERATOR, "sip:carol@ims.example.net", [], carol_psk, b"carol-psk-id"
    )
    junk = Initiator(b"\xff\xfe", carol_psk, b"sip:kms.ims.example.net", psk_id=b"carol-psk-id")
    answer = _ask(core, junk, t_at(NOW))
    assert answer.header.data_type == DataType.ERROR  # type: ignore[attr-defined]
    errors = [e.err_no for e in answer.find_all(ErrorPayload)]  # type: ignore[attr-defined]
    assert errors == [ErrNo.INVALID_ID]


def _granted(core: TicketCore, asked: object) -> object:
    from firmware.mikey.codec import Ticket
    from tests.calls import ues

    alice = ues(PrfFunc.MIKEY_1)[0]
    req = alice.request_init(csb_id=31, t=t_at(NOW), rand_i=bytes(range(32)), policy=asked)
    return decode(core.exchange(req)).require(Ticket).policy


@pytest.mark.parametrize(
    ("trs", "tre", "granted"),
    [
        (None, NOW + 30 * 86400, (NOW, NOW + 86400)),  # never past the maximum lifetime
        (NOW + 600, None, (NOW + 600, NOW + 600 + 3600)),  # a later start: the default lifetime
        (NOW + 2 * 86400, None, (NOW + 86400, NOW + 86400)),  # a start past the maximum
    ],
)
def test_grants_a_validity_within_the_configured_lifetimes(
    node, trs: float | None, tre: float | None, granted: tuple[float, float]
) -> None:
    """Defaults: 1 h lifetime, 24 h at most from now (TicketSettings)."""
    from firmware.core.ours import ts_unix
    from firmware.mikey.codec import RoleTimestamp, TicketPolicy
    from firmware.mikey.constants import TsRole, TsType

    core, _, _ = node
    plain = requested_policy(PrfFunc.MIKEY_1, False, [BOB.encode()])
    bounds = [
        RoleTimestamp(role, TsType.NTP_UTC, t_at(at).value)
        for role, at in ((TsRole.TRs, trs), (TsRole.TRe, tre)) if at is not None
    ]  # fmt: skip
    asked = TicketPolicy(1, 1, 1, PrfFunc.MIKEY_1, plain.flags, (*bounds, *plain.payloads))
    policy = _granted(core, asked)
    start, end = policy.tr(TsRole.TRs), policy.tr(TsRole.TRe)  # type: ignore[attr-defined]
    assert start is not None and end is not None
    assert (ts_unix(start), ts_unix(end)) == granted


@pytest.mark.parametrize(
    ("asked", "needs"),
    [("G", "F"), ("M", "F"), ("", "H")],
)
def test_grants_the_flags_a_requested_flag_depends_on(node, asked: str, needs: str) -> None:
    """G (TEKs from both RANDs) and M (the responder's own keys) need F; without G the TEKs
    come from RANDRi alone, so H is granted (RFC 6043 6.10). Key forking off: it implies F."""
    from firmware.mikey.codec import TicketPolicy, TpFlags

    core, _, _ = node
    core.settings = TicketSettings("sip:kms.ims.example.net", key_forking=False)
    plain = requested_policy(PrfFunc.MIKEY_1, False, [BOB.encode()])
    flags = plain.flags & ~TpFlags.H & ~TpFlags.F
    if asked:
        flags |= TpFlags[asked]
    policy = _granted(core, TicketPolicy(1, 1, 1, PrfFunc.MIKEY_1, flags, plain.payloads))
    assert policy.flags & TpFlags[needs]  # type: ignore[attr-defined]
    if asked == "G":
        assert not policy.flags & TpFlags.H  # type: ignore[attr-defined]


def test_refuses_a_ticket_request_that_names_no_responder(node) -> None:
    """A ticket anybody could resolve is not issued: the request must name its responders."""
    from firmware.mikey.codec import TicketPolicy
    from firmware.mikey.payloads import ErrorPayload
    from tests.calls import ues

    core, _, _ = node
    plain = requested_policy(PrfFunc.MIKEY_1, False, [BOB.encode()])
    alice = ues(PrfFunc.MIKEY_1)[0]
    req = alice.request_init(
        csb_id=32, t=t_at(NOW), rand_i=bytes(range(32)),
        policy=TicketPolicy(1, 1, 1, PrfFunc.MIKEY_1, plain.flags, ()),
    )  # fmt: skip
    answer = decode(core.exchange(req))
    assert answer.header.data_type == DataType.ERROR
    assert [e.err_no for e in answer.find_all(ErrorPayload)] == [ErrNo.INVALID_TPPAR]


@pytest.mark.parametrize("kind", [(2, 1, 1), (1, 2, 1), (1, 1, 2)])
def test_refuses_to_issue_any_ticket_but_the_mikey_base_ticket(
    node, kind: tuple[int, int, int]
) -> None:
    """Ticket type, subtype and version 1/1/1 (RFC 6043 6.10, Annex A) are all this KMS makes."""
    from firmware.mikey.codec import TicketPolicy
    from firmware.mikey.payloads import ErrorPayload
    from tests.calls import ues

    core, _, _ = node
    plain = requested_policy(PrfFunc.MIKEY_1, False, [BOB.encode()])
    alice = ues(PrfFunc.MIKEY_1)[0]
    req = alice.request_init(
        csb_id=33, t=t_at(NOW), rand_i=bytes(range(32)),
        policy=TicketPolicy(*kind, PrfFunc.MIKEY_1, plain.flags, plain.payloads),
    )  # fmt: skip
    drawn: list[str] = []  # refused before any key material is made or sealed
    real_random, real_tpk = core.vault.random_bytes, core.vault.ticket_prf
    core.vault.random_bytes = lambda n: drawn.append("random") or real_random(n)  # type: ignore[method-assign]
    core.vault.ticket_prf = lambda *a: drawn.append("tpk") or real_tpk(*a)  # type: ignore[method-assign]
    answer = decode(core.exchange(req))
    assert answer.header.data_type == DataType.ERROR
    assert [e.err_no for e in answer.find_all(ErrorPayload)] == [ErrNo.INVALID_TICKET]
    assert drawn == []


def _resolve_as(world: object, offer: object, name: bytes, psk: bytes, **ue: object) -> object:
    """A RESOLVE_INIT of `offer`'s ticket by a responder naming itself `name`, keyed by `psk`."""
    from firmware.mikey.exchange import Responder
    from tests.calls import KMS

    bob = Responder(name, psk, ue.pop("kms", KMS), **ue)  # type: ignore[arg-type]
    bob.receive_transfer_init(offer.transfer_init)  # type: ignore[attr-defined]
    ri = bob.resolve_init(csb_id=41, t=t_at(world.clock.now), rand_r=bytes(range(32)))  # type: ignore[attr-defined]
    return decode(world.core.exchange(ri))  # type: ignore[attr-defined]


def test_a_responder_cannot_resolve_under_another_users_identity_with_its_own_psk() -> None:
    """Bob names his PSK by its id (IDRpsk) and calls himself carol (IDRr): V verifies with his
    PSK, and carol is an allowed responder, but carol is not one of bob's identities
    (TS 33.328 6.2.3.5). He must not get carol's keys."""
    from firmware.mikey.payloads import ErrorPayload
    from tests.core.fakes import OPERATOR
    from tests.core.world import CAROL, World

    world = World()
    world.admin.put_user(OPERATOR, BOB, [], BOB_PSK, b"bob-psk-id")
    offer = world.offer(forking=False, responders=(CAROL, BOB))
    answer = _resolve_as(world, offer, CAROL.encode(), BOB_PSK, psk_id=b"bob-psk-id")
    assert answer.header.data_type == DataType.ERROR  # type: ignore[attr-defined]
    assert [e.err_no for e in answer.find_all(ErrorPayload)] == [ErrNo.INVALID_ID]  # type: ignore[attr-defined]
    honest = _resolve_as(world, offer, BOB.encode(), BOB_PSK, psk_id=b"bob-psk-id")
    assert honest.header.data_type == DataType.RESOLVE_RESP  # type: ignore[attr-defined]


def test_refuses_a_resolve_whose_idrkms_is_not_this_kms() -> None:
    from firmware.mikey.payloads import ErrorPayload
    from tests.core.world import World

    world = World()
    offer = world.offer(forking=False)
    answer = _resolve_as(world, offer, BOB.encode(), BOB_PSK, kms=b"sip:other-kms.example.net")
    assert answer.header.data_type == DataType.ERROR  # type: ignore[attr-defined]
    assert [e.err_no for e in answer.find_all(ErrorPayload)] == [ErrNo.INVALID_ID]  # type: ignore[attr-defined]


def test_refuses_to_resolve_a_ticket_whose_vr_was_altered_in_transit() -> None:
    """With key forking the responder cannot check Vr (it needs the unforked MPKr): the KMS
    does, when the responder hands it the ticket (RFC 6043 4.2.3.4), and refuses it."""
    from firmware.mikey.codec import Ticket
    from firmware.mikey.payloads import ErrorPayload
    from tests.core.world import Offer, World

    world = World()
    offer = world.offer(forking=True)
    data = decode(offer.transfer_init).require(Ticket).initiator_data
    assert data is not None
    altered = bytearray(offer.transfer_init)
    altered[offer.transfer_init.index(data[-1].mac)] ^= 0x01  # Vr's MAC
    tampered = Offer(offer.alice, bytes(altered))
    answer = _resolve_as(world, tampered, BOB.encode(), BOB_PSK)
    assert answer.header.data_type == DataType.ERROR  # type: ignore[attr-defined]
    assert [e.err_no for e in answer.find_all(ErrorPayload)] == [ErrNo.INVALID_TICKET]  # type: ignore[attr-defined]
    assert _resolve_as(world, offer, BOB.encode(), BOB_PSK).header.data_type == (  # type: ignore[attr-defined]
        DataType.RESOLVE_RESP
    )
