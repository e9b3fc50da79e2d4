"""The alarm bus's rules (firmware/audit/alarms.py), without I/O: alarms kept to their agency,
bounded queues, watcher caps."""

from __future__ import annotations

import pytest

from firmware.audit.alarms import WATCHER_OVERFLOW, AlarmBus
from firmware.core.errors import TooManyStreams
from firmware.core.ports import Caller, Role
from tests.core.fakes import ADMIN, DF2, DF2_OTHER, NOBODY


def _bus(**kw: int) -> AlarmBus:
    return AlarmBus(lambda: 1_900_000_000.0, **kw)  # type: ignore[arg-type]


def _drain(sub) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    seen = []
    while (alarm := sub.get(timeout=0)) is not None:
        seen.append((alarm.reason, alarm.correlation_id))
    return seen


def test_a_df2_watcher_sees_only_its_own_requests_alarms_and_node_alarms() -> None:
    bus = _bus()
    mine, theirs, admin = bus.subscribe(DF2), bus.subscribe(DF2_OTHER), bus.subscribe(ADMIN)
    bus.raise_alarm("TARGET_MISMATCH", DF2, "L1", "c-mine", "x")
    bus.raise_alarm("NO_ACTIVE_WARRANT", DF2_OTHER, "L2", "c-theirs", "x")
    bus.raise_alarm("ROLE_NOT_ALLOWED", NOBODY, "", "c-nobody", "x")
    bus.raise_alarm("HSM_REMOVED")
    assert _drain(mine) == [("TARGET_MISMATCH", "c-mine"), ("HSM_REMOVED", "")]
    assert _drain(theirs) == [("NO_ACTIVE_WARRANT", "c-theirs"), ("HSM_REMOVED", "")]
    assert [r for r, _ in _drain(admin)] == [
        "TARGET_MISMATCH",
        "NO_ACTIVE_WARRANT",
        "ROLE_NOT_ALLOWED",
        "HSM_REMOVED",
    ]


def test_another_certificate_with_the_same_identities_is_another_agency() -> None:
    """Visibility follows the certificate (fingerprint), not a name another CA could issue."""
    bus = _bus()
    twin = Caller(DF2.identities, DF2.holders, "fp-twin", "TLSv1.3")
    watcher = bus.subscribe(twin)
    bus.raise_alarm("TARGET_MISMATCH", DF2, "L1", "c1", "x")
    assert _drain(watcher) == []


def test_a_request_without_a_fingerprint_never_passes_for_a_node_alarm() -> None:
    bus = _bus()
    watcher = bus.subscribe(DF2)
    bus.raise_alarm("ROLE_NOT_ALLOWED", Caller(("dns:x",)), "", "c1", "x")
    assert _drain(watcher) == []


def test_a_node_alarm_naming_a_liid_is_for_admins_only() -> None:
    """Only node alarms that name no LIID are everybody's: a LIID belongs to one agency."""
    bus = _bus()
    df2, admin = bus.subscribe(DF2), bus.subscribe(ADMIN)
    bus.raise_alarm("WARRANT_EXPIRED", liid="L-other-agency", detail="x")
    assert _drain(df2) == []
    assert _drain(admin) == [("WARRANT_EXPIRED", "")]


def test_a_watcher_without_a_role_sees_nothing() -> None:
    bus = _bus()
    watcher = bus.subscribe(NOBODY)
    bus.raise_alarm("HSM_REMOVED")
    assert _drain(watcher) == []


def test_a_watcher_that_never_reads_holds_at_most_its_queue_and_learns_of_the_loss() -> None:
    dropped: list[int] = []
    bus = AlarmBus(lambda: 0.0, queue_size=5, dropped=lambda: dropped.append(1))
    slow = bus.subscribe(ADMIN)
    for i in range(100):
        bus.raise_alarm("TARGET_MISMATCH", DF2, "L", f"c{i}", "x")
    assert slow.pending == 5
    assert len(dropped) == 95
    first = slow.get(timeout=0)
    assert first is not None and first.reason == WATCHER_OVERFLOW and "95" in first.detail
    assert [c for _, c in _drain(slow)] == [f"c{i}" for i in range(95, 100)]


def test_four_watchers_that_never_read_do_not_grow_memory() -> None:
    bus = _bus(queue_size=10)
    watchers = [
        bus.subscribe(Caller((f"dns:a{i}",), ((Role.ADMIN, ()),), f"fp{i}")) for i in range(4)
    ]
    for i in range(10_000):
        bus.raise_alarm("TARGET_MISMATCH", DF2, "L", f"c{i}", "x")
    assert [w.pending for w in watchers] == [10] * 4


def test_watchers_are_capped_per_identity_and_in_all() -> None:
    bus = _bus(per_identity=2, max_watchers=3)
    bus.subscribe(DF2)
    bus.subscribe(DF2)
    with pytest.raises(TooManyStreams):
        bus.subscribe(DF2)
    bus.subscribe(ADMIN)
    with pytest.raises(TooManyStreams):
        bus.subscribe(DF2_OTHER)


def test_a_closed_watcher_frees_its_place() -> None:
    bus = _bus(per_identity=1)
    sub = bus.subscribe(DF2)
    sub.close()
    bus.subscribe(DF2)
    assert bus.watchers == 1


def test_a_sticky_alarm_reaches_watchers_that_subscribe_later_and_others_do_not() -> None:
    bus = _bus()
    bus.raise_alarm("TAMPER", detail="gap accepted", sticky=True)
    bus.raise_alarm("HSM_REMOVED", detail="not sticky")
    assert _drain(bus.subscribe(DF2)) == [("TAMPER", "")]
    assert _drain(bus.subscribe(NOBODY)) == []
