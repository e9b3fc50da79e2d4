"""The one refusal path (firmware/core/refusals.py) and the admin rules (audit before acting,
field caps) at the core, against in-memory fakes."""

from __future__ import annotations

import pytest

from firmware.core.admin import Admin
from firmware.core.errors import (
    AuditUnavailable,
    HsmUnavailable,
    InvalidRequest,
    MalformedMessage,
    NoActiveWarrant,
    RoleNotAllowed,
)
from firmware.core.fields import MAX_FIELD_BYTES, describe
from firmware.core.ports import KeyName
from firmware.core.refusals import AuditRateLimit, Refusals
from hsm.fake import FakeVault
from tests.calls import ALICE
from tests.core.fakes import (
    ADMIN,
    DF2,
    NOBODY,
    MemoryAudit,
    MemoryStore,
    RecordingAlarms,
    caller,
)


class Clock:
    def __init__(self, now: float = 1_900_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts() -> tuple[Refusals, MemoryAudit, RecordingAlarms, Clock, list[tuple[str, str]]]:
    audit, alarms, clock = MemoryAudit(), RecordingAlarms(), Clock()
    counted: list[tuple[str, str]] = []
    refusals = Refusals(
        audit, alarms, clock, lambda m, r: counted.append((m, r)), unknown_per_second=3
    )
    return refusals, audit, alarms, clock, counted


@pytest.mark.parametrize(
    "error",
    [
        NoActiveWarrant("no warrant"),
        MalformedMessage("garbage"),
        InvalidRequest("too long"),
        RoleNotAllowed("no role"),
        HsmUnavailable("gone"),
    ],
)
def test_every_refusal_raises_one_alarm_writes_one_record_and_counts_once(parts, error) -> None:
    refusals, audit, alarms, _, counted = parts
    answer = refusals.refuse(DF2, "GetKeys", error, {"liid": "L1", "correlation_id": "c1"})
    assert answer is error
    assert [(a.reason, a.caller, a.liid, a.correlation_id) for a in alarms.raised] == [
        (error.reason, DF2, "L1", "c1")
    ]
    (record,) = audit.records
    assert record.event == "KEY_REFUSED"
    assert record.fields["reason"] == error.reason
    assert record.fields["caller"] == list(DF2.identities)
    assert record.fields["fingerprint"] == DF2.fingerprint
    assert counted == [("GetKeys", error.reason)]


def test_the_alarm_goes_out_when_the_record_cannot_be_written_and_the_answer_says_so(
    parts, caplog: pytest.LogCaptureFixture
) -> None:
    refusals, audit, alarms, _, _ = parts
    audit.fail_next()
    with caplog.at_level("ERROR", logger="kmsnode.refusals"):
        answer = refusals.refuse(DF2, "GetKeys", NoActiveWarrant("no warrant"), {"liid": "L1"})
    assert isinstance(answer, AuditUnavailable)
    assert alarms.reasons() == ["NO_ACTIVE_WARRANT"]
    assert audit.records == []
    assert [r.getMessage() for r in caplog.records] == [
        "audit record of a refused GetKeys could not be written"
    ]


def test_a_node_side_error_keeps_its_answer_when_the_record_cannot_be_written(parts) -> None:
    refusals, audit, alarms, _, _ = parts
    audit.fail_next()
    error = HsmUnavailable("the HSM is gone")
    assert refusals.refuse(DF2, "GetKeys", error, {}) is error
    assert alarms.reasons() == ["HSM_UNAVAILABLE"]


def test_a_role_less_certificate_writes_a_bounded_number_of_records_and_a_summary(parts) -> None:
    """A certificate that holds no role cannot fill the disk: 3 records a second, the rest
    counted and summarised once; every refusal still alarms."""
    refusals, audit, alarms, clock, _ = parts
    for _ in range(50):
        refusals.refuse(NOBODY, "PutUser", RoleNotAllowed("no role"), {})
    assert audit.events() == ["ROLE_REFUSED"] * 3
    assert len(alarms.raised) == 50
    clock.now += 1
    refusals.refuse(NOBODY, "PutUser", RoleNotAllowed("no role"), {})
    assert audit.events()[3:] == ["AUDIT_SUPPRESSED", "ROLE_REFUSED"]
    assert audit.records[3].fields["suppressed"] == 47
    assert audit.records[3].fields["fingerprint"] == NOBODY.fingerprint


def test_suppressed_refusals_are_summarised_when_the_node_stops(parts) -> None:
    refusals, audit, _, _, _ = parts
    for _ in range(5):
        refusals.refuse(NOBODY, "PutUser", RoleNotAllowed("no role"), {})
    refusals.flush()
    assert audit.events() == ["ROLE_REFUSED"] * 3 + ["AUDIT_SUPPRESSED"]
    assert audit.records[-1].fields["suppressed"] == 2
    refusals.flush()  # nothing left to summarise
    assert len(audit.records) == 4


def test_a_df2_is_never_suppressed(parts) -> None:
    refusals, audit, _, _, _ = parts
    for _ in range(20):
        refusals.refuse(DF2, "GetKeys", NoActiveWarrant("no warrant"), {})
    assert audit.events() == ["KEY_REFUSED"] * 20


def test_refused_fields_are_capped_and_escaped_in_records_and_alarms(parts) -> None:
    refusals, audit, alarms, _, _ = parts
    liid = "L\n" + "x" * 5000
    refusals.refuse(DF2, "GetKeys", InvalidRequest("liid too long"), {"liid": liid})
    stored = audit.records[0].fields["liid"]
    assert isinstance(stored, str) and "\n" not in stored
    assert len(stored) <= MAX_FIELD_BYTES + 8 and stored == describe(liid)
    assert alarms.raised[0].liid == describe(liid)


# --- admin: audit before acting, caps -------------------------------------------------------


class WatchedStore(MemoryStore):
    """Remembers how many audit records existed at each write (audit before acting)."""

    def __init__(self, audit: MemoryAudit) -> None:
        super().__init__()
        self._audit = audit
        self.records_at_write: list[int] = []

    def put_user(self, user):  # type: ignore[no-untyped-def]
        self.records_at_write.append(len(self._audit.records))
        super().put_user(user)

    def put_warrant(self, warrant):  # type: ignore[no-untyped-def]
        self.records_at_write.append(len(self._audit.records))
        super().put_warrant(warrant)


@pytest.fixture
def admin() -> tuple[Admin, WatchedStore, MemoryAudit]:
    audit = MemoryAudit()
    store = WatchedStore(audit)
    return Admin(FakeVault(), store, audit, Clock(), 86400, 60), store, audit


def test_an_admin_change_is_audited_before_it_is_applied(admin) -> None:
    core, store, audit = admin
    core.put_user(ADMIN, ALICE, [], b"", b"")
    core.put_warrant(ADMIN, "L1", ALICE, 0, 1e10, ["df2.li.example.net"])
    assert store.records_at_write == [1, 2]
    assert audit.events() == ["ADMIN_PUT_USER", "ADMIN_PUT_WARRANT"]
    assert audit.records[0].fields["caller"] == list(ADMIN.identities)


@pytest.mark.parametrize("who", [DF2, NOBODY])
def test_the_admin_core_refuses_a_caller_without_the_admin_role(admin, who) -> None:
    """Second line behind the api's role check: no change and no record."""
    core, store, audit = admin
    for change in (
        lambda: core.put_user(who, ALICE, [], b"", b""),
        lambda: core.put_warrant(who, "L1", ALICE, 0, 1e10, ["df2.li.example.net"]),
        lambda: core.delete_warrant(who, "L1"),
        lambda: core.delete_user(who, ALICE),
        lambda: core.rotate(who),
    ):
        with pytest.raises(RoleNotAllowed):
            change()
    assert audit.records == [] and store.records_at_write == []


def test_an_admin_change_whose_record_cannot_be_written_changes_nothing(admin) -> None:
    core, store, audit = admin
    audit.fail_next(4)
    with pytest.raises(AuditUnavailable):
        core.put_user(ADMIN, ALICE, [], b"", b"")
    with pytest.raises(AuditUnavailable):
        core.put_warrant(ADMIN, "L1", ALICE, 0, 1e10, ["df2.li.example.net"])
    with pytest.raises(AuditUnavailable):
        core.rotate(ADMIN)
    with pytest.raises(AuditUnavailable):
        core.delete_user(ADMIN, ALICE)
    assert store.records_at_write == [] and store.users == {} and store.warrants == {}
    assert store.key_records(KeyName.TICKET_PROTECTION) == []


def test_put_user_records_never_hold_the_psk(admin) -> None:
    core, _, audit = admin
    psk = bytes(range(32))
    _, generated = core.put_user(ADMIN, ALICE, ["tel:+15550100"], b"", b"")
    core.put_user(ADMIN, "sip:bob@ims.example.net", [], psk, b"")
    text = repr([r.fields for r in audit.records])
    assert generated is not None
    for key in (psk, generated):
        assert key.hex() not in text and key.hex().upper() not in text and repr(key) not in text


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (
            lambda a: a.put_warrant(ADMIN, "L1", ALICE, 0, 1, ["df2.li.example.net\ndf2-evil"]),
            "df2",
        ),
        (lambda a: a.put_warrant(ADMIN, "L1", ALICE, 0, 1, ["d" * (MAX_FIELD_BYTES + 1)]), "df2"),
        (lambda a: a.put_warrant(ADMIN, "L\x001", ALICE, 0, 1, ["df2"]), "liid"),
        (lambda a: a.put_warrant(ADMIN, "L" * 300, ALICE, 0, 1, ["df2"]), "liid"),
        (lambda a: a.put_warrant(ADMIN, "L1", ALICE + "\n", 0, 1, ["df2"]), "target"),
        (lambda a: a.put_user(ADMIN, "sip:" + "u" * 300 + "@x.net", [], b"", b""), "identity"),
        (lambda a: a.put_user(ADMIN, ALICE, ["tel:+1555\x7f"], b"", b""), "alias"),
        (lambda a: a.delete_user(ADMIN, "sip:a@x.net\u2028"), "identity"),
        (lambda a: a.delete_warrant(ADMIN, "L" * 300), "liid"),
    ],
)
def test_admin_fields_are_capped_before_anything_is_written(admin, call, field) -> None:
    core, store, audit = admin
    with pytest.raises(InvalidRequest, match=field):
        call(core)
    assert audit.records == [] and store.records_at_write == []


def test_a_replaced_or_deleted_users_psk_is_forgotten_by_the_vault(admin) -> None:
    """The PSK a user no longer has must not stay usable in the HSM (hsm/psks.py)."""
    core, _, _ = admin
    first, _ = core.put_user(ADMIN, ALICE, [], bytes(range(32)), b"")
    core.put_user(ADMIN, ALICE, ["tel:+15550100"], bytes(range(32)), b"")  # same PSK: kept
    assert core.vault.forgotten == []
    second, _ = core.put_user(ADMIN, ALICE, [], bytes(range(1, 33)), b"")
    assert core.vault.forgotten == [first.wrapped_psk]
    core.delete_user(ADMIN, ALICE)
    assert core.vault.forgotten == [first.wrapped_psk, second.wrapped_psk]


def test_the_rate_limit_tracks_up_to_its_bound_and_summarises_what_it_drops() -> None:
    """Memory stays bounded whatever number of role-less certificates turn up; within the bound
    each keeps its own count, and a certificate dropped to make room has its suppressed count
    summarised at once, never lost."""
    limit = AuditRateLimit(per_second=1, max_tracked=2)
    assert limit.admit("a", 5.0) == (True, [])
    assert limit.admit("b", 5.0) == (True, [])
    assert limit.admit("a", 5.1) == (False, [])  # both still tracked: a's count holds
    assert limit.admit("c", 5.2) == (True, [])  # a third: the least recent (b, none suppressed)
    assert limit.admit("b", 5.3) == (True, [("a", 1)])  # room for b: a goes, its 1 summarised
    assert limit.take_suppressed() == []


def test_a_dropped_certificates_suppressed_refusals_are_written_as_a_summary(parts) -> None:
    refusals, audit, _, _, _ = parts
    refusals.limit = AuditRateLimit(per_second=1, max_tracked=1)
    for name in ("one", "one", "two"):  # one's second refusal is suppressed, then one dropped
        refusals.refuse(caller(f"dns:{name}.example.net"), "GetKeys", RoleNotAllowed("no role"))
    summaries = [r.fields for r in audit.records if r.event == "AUDIT_SUPPRESSED"]
    assert summaries == [{"fingerprint": "fp-dns:one.example.net", "suppressed": 1}]
    assert [r.event for r in audit.records] == ["KEY_REFUSED", "AUDIT_SUPPRESSED", "KEY_REFUSED"]


def test_a_summarised_count_is_summarised_once() -> None:
    limit = AuditRateLimit(per_second=1)
    assert limit.admit("a", 1.0) == (True, [])
    assert limit.admit("a", 1.5) == (False, [])
    assert limit.admit("a", 2.0) == (True, [("a", 1)])
    assert limit.admit("a", 3.0) == (True, [])
