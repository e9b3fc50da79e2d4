"""X1 task provisioning (ETSI TS 103 221-1; TS 33.128 7.9 for a key holder): tasks are warrants,
destinations are the DF2s that may fetch their keys. Transport-free: firmware/x1 decodes the XML.

Rules:
- Only a caller holding the X1 role (the ADMF / LIPF) changes tasks or destinations here; the
  ADMIN role keeps AdminService's warrant methods (firmware/core/admin.py). Both see the same
  warrants: a task is a warrant whose XID is stored with it (unique among warrants).
- Audit before acting: each change is checked first (the same warrant checks as AdminService:
  field caps, canonical target, window, DF2 identities), then its X1_* record is written
  (naming every identity of the caller), and only then applied; no record, no change.
- A task's DF2 identities are the deliveryAddress uris of the destinations its listOfDIDs names;
  every DID must exist (2040 otherwise). Modifying a destination rewrites the DF2 identities of
  every task naming it; a destination a task names cannot be removed (7010).
- Activation refuses an XID that exists (2010) and an LIID another warrant holds (3000); a
  modification is a full replacement of an existing task (2020 otherwise) that keeps its LIID
  (3001 for another one); deactivation deletes the warrant (2020 when there is none).
  DeactivateAllTasks ends every task (never an AdminService warrant) unless disabled (5010).
- One lock serialises the read-modify-write sequences of this process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from firmware.core.admin import make_warrant, warrant_record
from firmware.core.errors import RoleNotAllowed, TaskRefused
from firmware.core.fields import check_field
from firmware.core.ports import AuditSink, Caller, Destination, Role, Store, StoreConflict, Warrant

# The end of a task that names no EndTime: 9999-12-31T23:59:59Z (finite, so it can be audited
# and stored as a number everywhere).
OPEN_END = 253402300799.0

XID_EXISTS, XID_ABSENT, DID_EXISTS, DID_ABSENT = 2010, 2020, 2030, 2040
ACTIVATE_FAILED, MODIFY_FAILED, DID_IN_USE, DEACTIVATE_ALL_DISABLED = 3000, 3001, 7010, 5010


@dataclass(frozen=True)
class TaskSpec:
    """An ActivateTask / ModifyTask as the core needs it."""

    xid: str
    target: str
    dids: tuple[str, ...]
    delivery_type: str
    liid: str | None = None  # from MediationDetails; the XID when absent
    start: float | None = None  # StartTime; the time of activation when absent
    end: float | None = None  # EndTime; OPEN_END when absent


class Tasks:
    """X1 tasks and destinations over the store and audit ports."""

    def __init__(
        self,
        store: Store,
        audit: AuditSink,
        clock: Callable[[], float],
        deactivate_all_enabled: bool = True,
    ) -> None:
        self.store, self.audit, self.clock = store, audit, clock
        self.deactivate_all_enabled = deactivate_all_enabled
        self._lock = threading.Lock()

    def _audit(self, caller: Caller, event: str, fields: dict[str, object]) -> None:
        if not caller.holds(Role.X1):
            raise RoleNotAllowed("X1 task provisioning needs the X1 role")
        self.audit.append(self.clock(), event, {**caller.who(), **fields})

    # --- reading ----------------------------------------------------------------------------

    def tasks(self) -> list[Warrant]:
        return [w for w in self.store.list_warrants() if w.xid]

    def task(self, xid: str) -> Warrant:
        for warrant in self.tasks():
            if warrant.xid == xid:
                return warrant
        raise TaskRefused(XID_ABSENT, "no task with this XID")

    def destinations(self) -> list[Destination]:
        return self.store.list_destinations()

    def destination(self, did: str) -> Destination:
        for destination in self.destinations():
            if destination.did == did:
                return destination
        raise TaskRefused(DID_ABSENT, "no destination with this DID")

    # --- tasks ------------------------------------------------------------------------------

    def _warrant(self, spec: TaskSpec, now: float) -> Warrant:
        check_field("xid", spec.xid, required=True)
        known = {d.did: d for d in self.destinations()}
        missing = [did for did in spec.dids if did not in known]
        if missing:
            raise TaskRefused(DID_ABSENT, "the task names a destination that does not exist")
        if not spec.dids:
            raise TaskRefused(ACTIVATE_FAILED, "a task names at least one destination (DF2)")
        return make_warrant(
            spec.liid if spec.liid is not None else spec.xid,
            spec.target,
            spec.start if spec.start is not None else now,
            spec.end if spec.end is not None else OPEN_END,
            [known[did].address for did in spec.dids],
            xid=spec.xid,
            dids=tuple(spec.dids),
            delivery_type=spec.delivery_type,
        )

    def activate(self, caller: Caller, spec: TaskSpec) -> Warrant:
        with self._lock:
            warrant = self._warrant(spec, self.clock())
            if any(w.xid == spec.xid for w in self.tasks()):
                raise TaskRefused(XID_EXISTS, "a task with this XID exists")
            if any(w.liid == warrant.liid for w in self.store.list_warrants()):
                raise TaskRefused(ACTIVATE_FAILED, "another warrant holds this LIID")
            self._audit(caller, "X1_ACTIVATE_TASK", warrant_record(warrant))
            self._put(warrant)
            return warrant

    def modify(self, caller: Caller, spec: TaskSpec) -> Warrant:
        with self._lock:
            old = self.task(spec.xid)
            warrant = self._warrant(spec, self.clock())
            if warrant.liid != old.liid:
                raise TaskRefused(MODIFY_FAILED, "the LIID of a task cannot change")
            self._audit(caller, "X1_MODIFY_TASK", warrant_record(warrant))
            self._put(warrant)
            return warrant

    def _put(self, warrant: Warrant) -> None:
        try:
            self.store.put_warrant(warrant)
        except StoreConflict:  # another process took the XID between our check and the write
            raise TaskRefused(XID_EXISTS, "a task with this XID exists") from None

    def deactivate(self, caller: Caller, xid: str) -> None:
        with self._lock:
            warrant = self.task(xid)
            self._audit(caller, "X1_DEACTIVATE_TASK", {"xid": xid, "liid": warrant.liid})
            if not self.store.delete_warrant(warrant.liid):
                raise TaskRefused(XID_ABSENT, "no task with this XID")

    def deactivate_all(self, caller: Caller) -> list[str]:
        """End every task; returns their XIDs."""
        if not self.deactivate_all_enabled:
            raise TaskRefused(DEACTIVATE_ALL_DISABLED, "DeactivateAllTasks is not enabled")
        with self._lock:
            tasks = self.tasks()
            self._audit(caller, "X1_DEACTIVATE_ALL_TASKS", {"xids": [w.xid for w in tasks]})
            for warrant in tasks:
                self.store.delete_warrant(warrant.liid)
            return [w.xid for w in tasks]

    # --- destinations -----------------------------------------------------------------------

    def _checked(self, destination: Destination) -> Destination:
        check_field("did", destination.did, required=True)
        check_field("friendlyName", destination.friendly_name)
        check_field("deliveryAddress", destination.address, required=True)
        return destination

    def create_destination(self, caller: Caller, destination: Destination) -> None:
        with self._lock:
            self._checked(destination)
            if any(d.did == destination.did for d in self.destinations()):
                raise TaskRefused(DID_EXISTS, "a destination with this DID exists")
            self._audit(caller, "X1_CREATE_DESTINATION", _record(destination))
            self.store.put_destination(destination)

    def modify_destination(self, caller: Caller, destination: Destination) -> None:
        with self._lock:
            self._checked(destination)
            self.destination(destination.did)
            affected = [w for w in self.tasks() if destination.did in w.dids]
            self._audit(
                caller,
                "X1_MODIFY_DESTINATION",
                {**_record(destination), "xids": [w.xid for w in affected]},
            )
            self.store.put_destination(destination)
            addresses = {d.did: d.address for d in self.destinations()}
            for warrant in affected:
                df2 = _df2(warrant.dids, addresses)
                self.store.put_warrant(replace(warrant, df2_identities=df2))

    def remove_destination(self, caller: Caller, did: str) -> None:
        with self._lock:
            self.destination(did)
            if any(did in w.dids for w in self.tasks()):
                raise TaskRefused(DID_IN_USE, "a task names this destination")
            self._audit(caller, "X1_REMOVE_DESTINATION", {"did": did})
            self.store.delete_destination(did)


def _df2(dids: Sequence[str], addresses: dict[str, str]) -> tuple[str, ...]:
    return tuple(sorted({addresses[did] for did in dids if did in addresses}))


def _record(destination: Destination) -> dict[str, object]:
    return {
        "did": destination.did,
        "friendly_name": destination.friendly_name,
        "delivery_type": destination.delivery_type,
        "address": destination.address,
    }
