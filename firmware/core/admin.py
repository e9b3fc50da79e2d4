"""Administrative use cases: users and their PSKs, warrants, ticket key versions and rotation.

Rules:
- Audit before acting: every change is checked first (field caps, identities, lengths), then its
  ADMIN_* record is written (naming every identity of the caller), and only then applied; if the
  record cannot be written (AuditUnavailable) nothing changes. Records never hold PSKs.
- Field caps (firmware/core/fields.py) hold for identities, aliases, LIIDs and DF2 identities
  before anything is stored or written.
- Identities are stored canonical; a user's PSK is stored only wrapped under the active KEK.
- A generated PSK comes from the HSM's RNG and is returned exactly once, to the caller.
- Rotation creates a new TPK version (it protects new tickets); the previous version becomes
  DECRYPT_ONLY and is destroyed by `sweep` once every ticket it protected has expired, which is
  known without per-ticket state: no ticket outlives `retired + max_ticket_lifetime + skew`.
- Key version records (created / retired / destroyed times) live in the store; the token is
  the truth for which versions exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from firmware.core.errors import Conflict, InvalidRequest, NotFound, RoleNotAllowed
from firmware.core.fields import check_field, check_fields
from firmware.core.identity import IdentityError, canonical
from firmware.core.ports import (
    NODE,
    AuditSink,
    Caller,
    KeyName,
    KeyRecord,
    KeyState,
    KeyVault,
    Role,
    Store,
    StoreConflict,
    User,
    Warrant,
)

PSK_LENGTHS = (16, 24, 32)
GENERATED_PSK_LENGTH = 32
MAX_ALIASES = 64
MAX_DF2_IDENTITIES = 64


@dataclass(frozen=True)
class KeyVersionView:
    name: KeyName
    version: int
    state: KeyState
    created: float | None


def _canonical(identity: str, what: str) -> str:
    check_field(what, identity, required=True)
    try:
        return canonical(identity)
    except IdentityError as exc:
        raise InvalidRequest(f"{what} is not a SIP or TEL URI: {exc}") from None


def make_warrant(
    liid: str,
    target: str,
    valid_from: float,
    valid_until: float,
    df2_identities: Sequence[str],
    **x1: object,
) -> Warrant:
    """A checked warrant (field caps, a canonical target, a window, one to
    MAX_DF2_IDENTITIES DF2 identities); `x1` are an X1 task's xid, dids, delivery_type."""
    check_field("liid", liid, required=True)
    if not valid_from < valid_until:
        raise InvalidRequest("valid_from must be before valid_until")
    if len(df2_identities) > MAX_DF2_IDENTITIES:
        raise InvalidRequest(f"a warrant names at most {MAX_DF2_IDENTITIES} DF2 identities")
    df2 = tuple(sorted(set(check_fields("df2_identities", list(df2_identities))) - {""}))
    if not df2:
        raise InvalidRequest("a warrant names at least one DF2 identity")
    target = _canonical(target, "target_identity")
    return Warrant(liid, target, valid_from, valid_until, df2, **x1)  # type: ignore[arg-type]


def warrant_record(warrant: Warrant) -> dict[str, object]:
    """What the audit record of a warrant change holds."""
    record: dict[str, object] = {
        "liid": warrant.liid,
        "target": warrant.target,
        "valid_from": warrant.valid_from,
        "valid_until": warrant.valid_until,
        "df2_identities": list(warrant.df2_identities),
    }
    if warrant.xid:
        record.update(xid=warrant.xid, dids=list(warrant.dids))
    return record


class Admin:
    """Users and key versions, over the vault and store ports."""

    def __init__(
        self,
        vault: KeyVault,
        store: Store,
        audit: AuditSink,
        clock: Callable[[], float],
        max_ticket_lifetime: float,
        clock_skew: float,
    ) -> None:
        self.vault, self.store, self.audit, self.clock = vault, store, audit, clock
        self.ticket_retention = max_ticket_lifetime + clock_skew
        self.key_listeners: list[Callable[[], None]] = []  # told when key versions change

    def _audit(self, caller: Caller, event: str, fields: dict[str, object]) -> None:
        """The record of a change about to be made (raises AuditUnavailable: then do nothing).
        Only an ADMIN changes anything (second line behind the api's role check)."""
        if not caller.holds(Role.ADMIN):
            raise RoleNotAllowed("administrative changes need the ADMIN role")
        self.audit.append(self.clock(), event, {**caller.who(), **fields})

    # --- users ------------------------------------------------------------------------------

    def put_user(
        self, caller: Caller, identity: str, aliases: Sequence[str], psk: bytes, psk_id: bytes
    ) -> tuple[User, bytes | None]:
        """Create or replace a user; returns it and the PSK when the KMS generated it."""
        main = _canonical(identity, "identity")
        if len(aliases) > MAX_ALIASES:
            raise InvalidRequest(f"at most {MAX_ALIASES} aliases")
        others = tuple(sorted({_canonical(a, "alias") for a in aliases} - {main}))
        if psk and len(psk) not in PSK_LENGTHS:
            raise InvalidRequest("psk must be 16, 24 or 32 bytes")
        if len(psk_id) > 1024:
            raise InvalidRequest("psk_id is longer than 1024 bytes")
        self._audit(
            caller,
            "ADMIN_PUT_USER",
            {"identity": main, "aliases": list(others), "psk_generated": not psk},
        )
        generated = None
        if not psk:
            psk = generated = self.vault.random_bytes(GENERATED_PSK_LENGTH)
        user = User(main, others, psk_id or main.encode(), self.vault.wrap_psk(psk))
        before = self.store.user_by_identity(main)
        try:
            self.store.put_user(user)
        except StoreConflict as exc:
            raise Conflict(str(exc)) from None
        if before is not None and before.wrapped_psk != user.wrapped_psk:
            self.vault.forget_psk(before.wrapped_psk)  # the PSK it replaced serves nobody now
        return user, generated

    def delete_user(self, caller: Caller, identity: str) -> None:
        main = _canonical(identity, "identity")
        self._audit(caller, "ADMIN_DELETE_USER", {"identity": main})
        before = self.store.user_by_identity(main)
        if not self.store.delete_user(main):
            raise NotFound("no such user")
        if before is not None:
            self.vault.forget_psk(before.wrapped_psk)

    def list_users(self) -> list[User]:
        return self.store.list_users()

    # --- warrants ---------------------------------------------------------------------------

    def put_warrant(
        self,
        caller: Caller,
        liid: str,
        target: str,
        valid_from: float,
        valid_until: float,
        df2_identities: Sequence[str],
    ) -> Warrant:
        """Create or replace the warrant `liid`; its target is stored canonical. DF2 identities
        are certificate identities: typed (`dns:...`, `uri:...`) or bare SAN values."""
        warrant = make_warrant(liid, target, valid_from, valid_until, df2_identities)
        self._audit(caller, "ADMIN_PUT_WARRANT", warrant_record(warrant))
        self.store.put_warrant(warrant)
        return warrant

    def delete_warrant(self, caller: Caller, liid: str) -> None:
        check_field("liid", liid, required=True)
        self._audit(caller, "ADMIN_DELETE_WARRANT", {"liid": liid})
        if not self.store.delete_warrant(liid):
            raise NotFound("no such warrant")

    def list_warrants(self) -> list[Warrant]:
        return self.store.list_warrants()

    # --- key versions -----------------------------------------------------------------------

    def key_versions(self, name: KeyName = KeyName.TICKET_PROTECTION) -> list[KeyVersionView]:
        """Versions in the token, in the state the store records for them (shared by every
        node: ACTIVE, DECRYPT_ONLY once retired, PENDING while staged), plus destroyed ones."""
        records = {r.version: r for r in self.store.key_records(name)}
        views = {}
        for info in self.vault.versions(name):
            record = records.get(info.version)
            state = info.state if record is None else _state(record)
            views[info.version] = KeyVersionView(
                name, info.version, state, record.created if record else None
            )
        for record in records.values():
            if record.destroyed is not None and record.version not in views:
                views[record.version] = KeyVersionView(
                    name, record.version, KeyState.DESTROYED, record.created
                )
        return [views[v] for v in sorted(views)]

    def record_existing(self) -> None:
        """Make sure every version in the token has a record (first start, dev-init): the
        token's highest version active, lower ones retired."""
        now = self.clock()
        for name in KeyName:
            known = {r.version for r in self.store.key_records(name)}
            for info in self.vault.versions(name):
                if info.version not in known:
                    active = info.state is KeyState.ACTIVE
                    self.store.record_key(
                        KeyRecord(name, info.version, now, None if active else now, None, now)
                    )

    def rotate(
        self, caller: Caller, name: KeyName = KeyName.TICKET_PROTECTION, staged: bool = False
    ) -> KeyVersionView:
        """Create the next version. Unless `staged`, it is activated at once and the previous
        active one becomes DECRYPT_ONLY; a staged version (a cluster rotation: export it wrapped
        to every node's HSM first) protects nothing until `activate`."""
        event = (
            "ADMIN_ROTATE_TICKET_KEY" if name is KeyName.TICKET_PROTECTION else "ADMIN_ROTATE_KEY"
        )
        self._audit(caller, event, {"key": name.value, "staged": staged})
        now = self.clock()
        info = self.vault.create_version(name)
        self.store.record_key(KeyRecord(name, info.version, now, None, None, None))
        if not staged:
            self._activate(name, info.version, now)
        self._keys_changed()
        state = KeyState.PENDING if staged else KeyState.ACTIVE
        return KeyVersionView(name, info.version, state, now)

    def activate(self, caller: Caller, name: KeyName, version: int) -> KeyVersionView:
        """Activate a staged version (every node's HSM must hold it: a node whose HSM lacks it
        answers UNAVAILABLE and alarms); the previous active one becomes DECRYPT_ONLY."""
        records = {r.version: r for r in self.store.key_records(name)}
        record = records.get(version)
        if record is None or not record.staged:
            raise InvalidRequest(f"{name.value}/v{version} is not a staged version")
        if version not in {v.version for v in self.vault.versions(name)}:
            raise InvalidRequest(f"{name.value}/v{version} is not in this node's HSM")
        self._audit(caller, "ADMIN_ACTIVATE_KEY", {"key": name.value, "version": version})
        now = self.clock()
        self._activate(name, version, now)
        self._keys_changed()
        return KeyVersionView(name, version, KeyState.ACTIVE, record.created)

    def _activate(self, name: KeyName, version: int, now: float) -> None:
        for record in self.store.key_records(name):
            if record.version == version:
                self.store.record_key(dataclasses.replace(record, activated=now, retired=None))
            elif record.active:
                self.store.record_key(dataclasses.replace(record, retired=now))

    def _keys_changed(self) -> None:
        for listener in self.key_listeners:
            listener()

    def sweep(self, name: KeyName = KeyName.TICKET_PROTECTION) -> list[int]:
        """Destroy DECRYPT_ONLY versions whose every ticket has expired; returns them."""
        now = self.clock()
        records = {r.version: r for r in self.store.key_records(name)}
        destroyed = []
        for info in self.vault.versions(name):
            record = records.get(info.version)
            if record is None or record.retired is None or record.destroyed is not None:
                continue
            if now > record.retired + self.ticket_retention:
                self.audit.append(
                    now, "KEY_DESTROYED", {**NODE.who(), "key": name.value, "version": info.version}
                )
                self.vault.destroy_version(name, info.version)
                self.store.record_key(dataclasses.replace(record, destroyed=now))
                destroyed.append(info.version)
        if destroyed:
            self._keys_changed()
        return destroyed


def _state(record: KeyRecord) -> KeyState:
    if record.destroyed is not None:
        return KeyState.DESTROYED
    if record.activated is None:
        return KeyState.PENDING
    return KeyState.ACTIVE if record.retired is None else KeyState.DECRYPT_ONLY


def active_version(records: Sequence[KeyRecord], vault: KeyVault, name: KeyName) -> int:
    """The version that protects new data: the highest the store records as active (shared by
    every node), else (no records yet) the token's highest."""
    active = [r.version for r in records if r.active]
    return max(active) if active else vault.active_version(name)
