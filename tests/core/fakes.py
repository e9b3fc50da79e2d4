"""In-memory fakes of the core's ports, for tests of the core's rules without I/O (the model is
python-tuf's trusted-metadata-set tests: one test per attack, nothing but Python).

The fakes keep the ports' contracts (a write is whole or not at all; `fail_next` makes the next
append fail as a full disk would), nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from firmware.core.errors import AuditUnavailable
from firmware.core.ports import (
    NODE,
    Caller,
    Destination,
    KeyName,
    KeyRecord,
    Resolution,
    Role,
    StoreConflict,
    User,
    Warrant,
)

OPERATOR = Caller(("local:test",), ((Role.ADMIN, ("local:test",)),))


def caller(*typed: str, roles: tuple[Role, ...] = (), fingerprint: str = "") -> Caller:
    """A certificate holder: its typed identities, the roles the first identity holds."""
    holders = tuple((r, typed[:1]) for r in roles)
    return Caller(typed, holders, fingerprint or f"fp-{typed[0] if typed else 'none'}", "TLSv1.3")


DF2 = caller("dns:df2.li.example.net", "uri:urn:df2", roles=(Role.DF2,), fingerprint="fp-df2")
DF2_OTHER = caller("dns:df2b.li.example.net", roles=(Role.DF2,), fingerprint="fp-df2b")
ADMIN = caller("dns:admin.li.example.net", roles=(Role.ADMIN,), fingerprint="fp-admin")
NOBODY = caller("dns:nobody.example.net", fingerprint="fp-nobody")


class MemoryStore:
    """The Store port in memory."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.counters: dict[str, int] = {}
        self.resolved: list[Resolution] = []
        self.warrants: dict[str, Warrant] = {}
        self.head: tuple[int, bytes] | None = None
        self.keys: dict[tuple[KeyName, int], KeyRecord] = {}
        self.destinations: dict[str, Destination] = {}

    def put_user(self, user: User) -> None:
        for other in self.users.values():
            if other.identity != user.identity and (
                other.identities & user.identities or other.psk_id == user.psk_id
            ):
                raise StoreConflict("identity or PSK id belongs to another user")
        self.users[user.identity] = user

    def delete_user(self, identity: str) -> bool:
        return self.users.pop(identity, None) is not None

    def user_by_psk_id(self, psk_id: bytes) -> User | None:
        return next((u for u in self.users.values() if u.psk_id == psk_id), None)

    def user_by_identity(self, identity: str) -> User | None:
        return next((u for u in self.users.values() if identity in u.identities), None)

    def list_users(self) -> list[User]:
        return sorted(self.users.values(), key=lambda u: u.identity)

    def count_users(self) -> int:
        return len(self.users)

    def advance_counter(self, identity: str, value: int) -> bool:
        if self.counters.get(identity, -1) >= value:
            return False
        self.counters[identity] = value
        return True

    def add_resolution(self, resolution: Resolution) -> None:
        self.resolved.append(resolution)

    def resolutions(self, ticket_id: bytes) -> list[Resolution]:
        return [r for r in self.resolved if r.ticket_id == ticket_id]

    def put_warrant(self, warrant: Warrant) -> None:
        if warrant.xid and any(
            w.xid == warrant.xid and w.liid != warrant.liid for w in self.warrants.values()
        ):
            raise StoreConflict("another warrant holds this XID")
        self.warrants[warrant.liid] = warrant

    def put_destination(self, destination: Destination) -> None:
        self.destinations[destination.did] = destination

    def delete_destination(self, did: str) -> bool:
        return self.destinations.pop(did, None) is not None

    def list_destinations(self) -> list[Destination]:
        return [self.destinations[k] for k in sorted(self.destinations)]

    def delete_warrant(self, liid: str) -> bool:
        return self.warrants.pop(liid, None) is not None

    def list_warrants(self) -> list[Warrant]:
        return [self.warrants[k] for k in sorted(self.warrants)]

    def warrants_for(self, target: str) -> list[Warrant]:
        return [w for w in self.list_warrants() if w.target == target]

    def audit_head(self) -> tuple[int, bytes] | None:
        return self.head

    def set_audit_head(self, count: int, mac: bytes, durable: bool = True) -> None:
        self.head = (count, mac)

    def record_key(self, record: KeyRecord) -> None:
        self.keys[(record.name, record.version)] = record

    def key_records(self, name: KeyName) -> list[KeyRecord]:
        return [r for (n, _), r in sorted(self.keys.items()) if n is name]

    def close(self) -> None:
        pass


@dataclass
class Record:
    time: float
    event: str
    fields: dict[str, object]


@dataclass
class MemoryAudit:
    """The AuditSink port: records in a list; `fail_next()` makes appends fail (a full disk)."""

    records: list[Record] = field(default_factory=list)
    failing: int = 0

    def fail_next(self, count: int = 1) -> None:
        self.failing = count

    def append(self, time: float, event: str, fields: Mapping[str, object]) -> int:
        if self.failing:
            self.failing -= 1
            raise AuditUnavailable("audit record not written: OSError")
        self.records.append(Record(time, event, dict(fields)))
        return len(self.records)

    def events(self) -> list[str]:
        return [r.event for r in self.records]


@dataclass
class RaisedAlarm:
    reason: str
    caller: Caller
    liid: str
    correlation_id: str
    detail: str


@dataclass
class RecordingAlarms:
    """The AlarmSink port: every alarm raised, in order."""

    raised: list[RaisedAlarm] = field(default_factory=list)

    def raise_alarm(
        self,
        reason: str,
        caller: Caller = NODE,
        liid: str = "",
        correlation_id: str = "",
        detail: str = "",
    ) -> RaisedAlarm:
        alarm = RaisedAlarm(reason, caller, liid, correlation_id, detail)
        self.raised.append(alarm)
        return alarm

    def reasons(self) -> list[str]:
        return [a.reason for a in self.raised]
