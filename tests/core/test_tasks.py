"""The X1 task rules (firmware/core/tasks.py) against in-memory port fakes: one test per rule."""

from __future__ import annotations

import pytest

from firmware.core.errors import AuditUnavailable, InvalidRequest, RoleNotAllowed, TaskRefused
from firmware.core.ports import Destination, Role, Warrant
from firmware.core.tasks import OPEN_END, Tasks, TaskSpec
from tests.core.fakes import OPERATOR, MemoryAudit, MemoryStore, caller

NOW = 1_900_000_000.0
ADMF = caller("dns:admf.li.example.net", roles=(Role.X1,))
DF2 = Destination("d-1", "DF2", "X2andX3", "dns:df2.li.example.net")
BOB = "sip:bob@ims.example.net"


def _tasks(**kw: object) -> tuple[Tasks, MemoryStore, MemoryAudit]:
    store, audit = MemoryStore(), MemoryAudit()
    tasks = Tasks(store, audit, lambda: NOW, **kw)  # type: ignore[arg-type]
    tasks.create_destination(ADMF, DF2)
    return tasks, store, audit


def _spec(xid: str = "x-1", **kw: object) -> TaskSpec:
    values: dict[str, object] = {"target": BOB, "dids": ("d-1",), "delivery_type": "X2andX3"}
    return TaskSpec(xid, **{**values, **kw})  # type: ignore[arg-type]


def test_a_task_is_a_warrant_for_its_destinations_df2_from_now_on_without_an_end() -> None:
    tasks, store, _ = _tasks()
    tasks.activate(ADMF, _spec())
    assert store.list_warrants() == [
        Warrant("x-1", BOB, NOW, OPEN_END, (DF2.address,), "x-1", ("d-1",), "X2andX3")
    ]


def test_the_mediation_liid_and_window_are_taken_when_given() -> None:
    tasks, store, _ = _tasks()
    tasks.activate(ADMF, _spec(liid="LI-7", start=NOW - 5, end=NOW + 5))
    (w,) = store.list_warrants()
    assert (w.liid, w.valid_from, w.valid_until) == ("LI-7", NOW - 5, NOW + 5)


@pytest.mark.parametrize("who", [OPERATOR, caller("dns:df2.li.example.net", roles=(Role.DF2,))])
def test_only_the_x1_role_provisions_tasks(who: object) -> None:
    tasks, store, _ = _tasks()
    with pytest.raises(RoleNotAllowed):
        tasks.activate(who, _spec())  # type: ignore[arg-type]
    with pytest.raises(RoleNotAllowed):
        tasks.create_destination(who, Destination("d-2", "", "X2Only", "dns:x"))  # type: ignore[arg-type]
    assert store.list_warrants() == [] and len(store.list_destinations()) == 1


def test_nothing_changes_when_the_audit_record_cannot_be_written() -> None:
    tasks, store, audit = _tasks()
    audit.fail_next()
    with pytest.raises(AuditUnavailable):
        tasks.activate(ADMF, _spec())
    assert store.list_warrants() == []


def test_the_audit_record_comes_before_the_change_and_names_the_admf() -> None:
    tasks, _, audit = _tasks()
    tasks.activate(ADMF, _spec())
    record = audit.records[-1]
    assert record.event == "X1_ACTIVATE_TASK"
    assert record.fields["caller"] == ["dns:admf.li.example.net"] and record.fields["xid"] == "x-1"


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        (_spec(dids=("d-404",)), 2040),
        (_spec(dids=()), 3000),
    ],
)
def test_refuses_a_task_without_known_destinations(spec: TaskSpec, code: int) -> None:
    tasks, store, _ = _tasks()
    with pytest.raises(TaskRefused) as info:
        tasks.activate(ADMF, spec)
    assert info.value.code == code and store.list_warrants() == []


def test_refuses_an_existing_xid_and_an_liid_another_warrant_holds() -> None:
    tasks, store, _ = _tasks()
    tasks.activate(ADMF, _spec())
    with pytest.raises(TaskRefused) as info:
        tasks.activate(ADMF, _spec(liid="LI-NEW"))
    assert info.value.code == 2010
    store.put_warrant(Warrant("LI-ADMIN", BOB, 0.0, 1.0, ("dns:x",)))
    with pytest.raises(TaskRefused) as info:
        tasks.activate(ADMF, _spec("x-2", liid="LI-ADMIN"))
    assert info.value.code == 3000
    assert store.warrants["LI-ADMIN"].xid == ""  # the AdminService warrant is untouched


def test_the_warrant_checks_of_admin_service_hold_for_tasks() -> None:
    tasks, _, _ = _tasks()
    with pytest.raises(InvalidRequest, match="target"):
        tasks.activate(ADMF, _spec(target="mailto:bob@example.net"))
    with pytest.raises(InvalidRequest, match="valid_from"):
        tasks.activate(ADMF, _spec(start=NOW, end=NOW - 1))


def test_modify_keeps_the_liid_and_needs_the_task() -> None:
    tasks, store, _ = _tasks()
    with pytest.raises(TaskRefused) as info:
        tasks.modify(ADMF, _spec())
    assert info.value.code == 2020
    tasks.activate(ADMF, _spec(liid="LI-1"))
    with pytest.raises(TaskRefused) as info:
        tasks.modify(ADMF, _spec(liid="LI-2"))
    assert info.value.code == 3001
    tasks.modify(ADMF, _spec(liid="LI-1", target="sip:carol@ims.example.net"))
    assert store.warrants["LI-1"].target == "sip:carol@ims.example.net"


def test_deactivate_all_ends_tasks_only_and_can_be_disabled() -> None:
    tasks, store, _ = _tasks()
    tasks.activate(ADMF, _spec())
    store.put_warrant(Warrant("LI-ADMIN", BOB, 0.0, 1.0, ("dns:x",)))
    assert tasks.deactivate_all(ADMF) == ["x-1"]
    assert list(store.warrants) == ["LI-ADMIN"]
    disabled, _, _ = _tasks(deactivate_all_enabled=False)
    with pytest.raises(TaskRefused) as info:
        disabled.deactivate_all(ADMF)
    assert info.value.code == 5010


def test_a_destination_in_use_cannot_be_removed_and_moving_it_moves_its_tasks() -> None:
    tasks, store, _ = _tasks()
    tasks.activate(ADMF, _spec())
    with pytest.raises(TaskRefused) as info:
        tasks.remove_destination(ADMF, "d-1")
    assert info.value.code == 7010
    tasks.modify_destination(ADMF, Destination("d-1", "moved", "X2andX3", "dns:df2-b.x"))
    assert store.warrants["x-1"].df2_identities == ("dns:df2-b.x",)
    with pytest.raises(TaskRefused) as info:
        tasks.create_destination(ADMF, Destination("d-1", "", "X2Only", "dns:y"))
    assert info.value.code == 2030
    tasks.deactivate(ADMF, "x-1")
    tasks.remove_destination(ADMF, "d-1")
    with pytest.raises(TaskRefused) as info:
        tasks.destination("d-1")
    assert info.value.code == 2040
