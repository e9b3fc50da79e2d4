"""Ports of the core: what the use cases need from the outside, as typing.Protocol.

Rules:
- The core depends only on these protocols; adapters (hsm/, firmware/store/) implement them.
- Key material that lives in the HSM never crosses a port: the vault computes with it and returns
  results (HMACs, PRF outputs, wrapped blobs). A user PSK crosses it once, inward, to be wrapped
  (`wrap_psk`); from then on the vault runs its PRF (`psk_prf`) and no port returns it.
- Key names are fixed (KeyName); labels in the token are `<name>/v<version>`.
- Who calls is a `Caller`, built by the api from the verified TLS certificate only (never from
  metadata); the core decides with it and names it in alarms and audit records.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from firmware.mikey.prf import PrfFunc


class KeyName(enum.StrEnum):
    """The node's long-term keys; each has one purpose (DESIGN.md, Keys)."""

    TICKET_PROTECTION = "ticket-protection"  # TPK: generic secret, HMAC (SIGN/VERIFY) only
    KEY_ENCRYPTION = "key-encryption"  # KEK: AES-256, WRAP/UNWRAP only
    AUDIT = "audit"  # audit key: generic secret, HMAC (SIGN/VERIFY) only


class KeyState(enum.Enum):
    """State of a key version, as the contract's KeyVersion.State."""

    ACTIVE = 1  # protects new data
    DECRYPT_ONLY = 2  # verifies/opens what it protected; protects nothing new
    DESTROYED = 3
    PENDING = 4  # staged: exists, protects nothing until activated (a cluster rotation)


@dataclass(frozen=True)
class KeyVersionInfo:
    """One version of a named key as the token holds it."""

    name: KeyName
    version: int
    state: KeyState


@dataclass(frozen=True)
class WrappedKey:
    """A user PSK wrapped under a KEK version (CKM_AES_KEY_WRAP, RFC 3394)."""

    kek_version: int
    blob: bytes = field(repr=False)

    @property
    def key_length(self) -> int:
        """The PSK's length in bytes (RFC 3394 adds one 8-byte block)."""
        return len(self.blob) - 8


class KeyVault(Protocol):
    """The node's HSM. Every method may raise HsmUnavailable; none ever reveals a long-term key.

    Version state is derived from the token: the highest existing version of a name is ACTIVE,
    lower existing versions are DECRYPT_ONLY; destroyed versions are gone from the token.
    """

    def ticket_prf(
        self, version: int, prf: PrfFunc, wants: Sequence[tuple[bytes, int]]
    ) -> list[bytes]:
        """The MIKEY PRF (RFC 3830 4.1.2) with TPK `version` as inkey, every HMAC in the token:
        PRF(TPK, label)[:out_len] for each (label, out_len) of `wants` (a key set in one call)."""
        ...

    def wrap_psk(self, psk: bytes) -> WrappedKey:
        """Wrap a user PSK under the active KEK."""
        ...

    def psk_prf(
        self, wrapped: WrappedKey, prf: PrfFunc, wants: Sequence[tuple[bytes, int]]
    ) -> list[bytes]:
        """As ticket_prf with the wrapped user PSK as inkey, every HMAC in the token; raises
        KeyVersionNotFound when its KEK version is gone, WrappedKeyRejected for a bad blob."""
        ...

    def forget_psk(self, wrapped: WrappedKey) -> None:
        """Drop what the vault holds of this PSK (its user changed or left); never raises."""
        ...

    def random_bytes(self, n: int) -> bytes:
        """`n` bytes from the token's RNG (C_GenerateRandom)."""
        ...

    def audit_hmac(self, data: bytes) -> bytes:
        """HMAC-SHA-256 of `data` under the active audit key, computed in the token."""
        ...

    def versions(self, name: KeyName) -> list[KeyVersionInfo]:
        """Versions of `name` in the token, lowest first."""
        ...

    def active_version(self, name: KeyName) -> int:
        """The highest version of `name` in the token; raises KeyVersionNotFound when none."""
        ...

    def create_version(self, name: KeyName) -> KeyVersionInfo:
        """Generate the next version of `name` in the token (it becomes ACTIVE)."""
        ...

    def destroy_version(self, name: KeyName, version: int) -> None:
        """Destroy one version in the token (C_DestroyObject); refuses the active version."""
        ...

    def available(self) -> bool:
        """True when the last call or probe reached the token."""
        ...


# --- callers, alarms, audit -------------------------------------------------------------------


class Role(enum.StrEnum):
    """Roles a certificate identity can hold (config [roles])."""

    DF2 = "df2"
    ADMIN = "admin"
    UE = "ue"
    X1 = "x1"  # the ADMF / LIPF provisioning warrants as ETSI TS 103 221-1 tasks


@dataclass(frozen=True)
class Caller:
    """Who calls, as the TLS layer proved it.

    Invariants: `identities` are every subject alternative name of the verified client
    certificate in typed form (`dns:<name>`, `uri:<uri>`), in certificate order; `holders` maps
    each held role to the identities through which it is held (a subset of `identities`);
    `fingerprint` is the SHA-256 of the certificate (hex), "" without one. A revoked certificate
    holds no role.
    """

    identities: tuple[str, ...] = ()
    holders: tuple[tuple[Role, tuple[str, ...]], ...] = ()
    fingerprint: str = ""
    tls_version: str = ""
    revoked: bool = False  # the certificate is on the revocation list (it then holds no role)

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset(role for role, _ in self.holders)

    def holds(self, role: Role) -> bool:
        return role in self.roles

    def holding(self, role: Role) -> tuple[str, ...]:
        """The identities of this caller that hold `role` (empty when it does not)."""
        for held, identities in self.holders:
            if held is role:
                return identities
        return ()

    @property
    def name(self) -> str:
        """Every identity, comma-separated (the contract's Alarm.caller)."""
        return ",".join(self.identities) if self.identities else "anonymous"

    def who(self) -> dict[str, object]:
        """How audit records name this caller: every identity and the certificate."""
        return {"caller": list(self.identities), "fingerprint": self.fingerprint}


NODE = Caller()  # the node itself (alarms no request caused)


class AuditSink(Protocol):
    """The audit log (firmware/audit/log.py): `append` returns once the record is durable and
    raises AuditUnavailable when it cannot be written (the caller then refuses)."""

    def append(self, time: float, event: str, fields: Mapping[str, object]) -> int: ...


class AlarmSink(Protocol):
    """The alarm bus (firmware/audit/alarms.py): every current watcher allowed to see the alarm
    has it when `raise_alarm` returns. `caller` is who caused it (NODE for node alarms)."""

    def raise_alarm(
        self,
        reason: str,
        caller: Caller = NODE,
        liid: str = "",
        correlation_id: str = "",
        detail: str = "",
    ) -> object: ...


# --- state store ------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """A subscriber known to the KMS.

    Invariants: `identity` and `aliases` are canonical (firmware.core.identity); `psk_id` is the
    IDRpsk value that finds this user (the identity's UTF-8 bytes when none was provisioned).
    """

    identity: str
    aliases: tuple[str, ...]
    psk_id: bytes
    wrapped_psk: WrappedKey

    @property
    def identities(self) -> frozenset[str]:
        """Every public identity of the user: the identity and its aliases."""
        return frozenset((self.identity, *self.aliases))


@dataclass(frozen=True)
class Resolution:
    """A ticket resolved by a responder; Xk binds a RESPONDER target through it."""

    ticket_id: bytes
    responder: str  # canonical identity that resolved the ticket
    randr_kms: bytes  # RANDRkms given with key forking; empty without
    resolved_at: float  # unix seconds
    id_data: bytes = b""  # IDRr ID Data as the responder sent it (the K7 forking label input)


@dataclass(frozen=True)
class Warrant:
    """A lawful-interception warrant: which DF2s may fetch keys of which target, and when."""

    liid: str
    target: str  # canonical identity
    valid_from: float  # unix seconds
    valid_until: float
    df2_identities: tuple[str, ...]
    # An ETSI TS 103 221-1 task provisioned over X1 is a warrant with its XID (unique among
    # warrants; "" for a warrant AdminService made), the DIDs its DF2 identities came from,
    # and the task's DeliveryType as the ADMF gave it.
    xid: str = ""
    dids: tuple[str, ...] = ()
    delivery_type: str = ""

    def active_at(self, now: float) -> bool:
        return self.valid_from <= now < self.valid_until


@dataclass(frozen=True)
class Destination:
    """An X1 destination (TS 103 221-1 DestinationDetails): a DF2, named by the certificate
    identity its deliveryAddress uri gives (typed `dns:...` / `uri:...`, or a bare SAN value)."""

    did: str
    friendly_name: str
    delivery_type: str
    address: str


@dataclass(frozen=True)
class KeyRecord:
    """What the store remembers of a key version (the token is the truth for existence)."""

    name: KeyName
    version: int
    created: float
    retired: float | None  # when a newer version took over; None while active
    destroyed: float | None
    activated: float | None = None  # when it began to protect new data; None while staged

    @property
    def active(self) -> bool:
        """Protects new data: activated, not retired, not destroyed."""
        return self.activated is not None and self.retired is None and self.destroyed is None

    @property
    def staged(self) -> bool:
        """Created (in at least one HSM) but not yet activated: a cluster rotation waits until
        every node's HSM holds it."""
        return self.activated is None and self.destroyed is None


class ReplayGuard(Protocol):
    """The timestamp window and replay cache (RFC 3830 5.4): in memory for one process
    (firmware/core/freshness.py), or shared by every node in PostgreSQL. Both raise
    StaleTimestamp for a refusal; the shared one also StoreUnavailable."""

    started_at: float

    def check_time(self, stamp: float, now: float) -> None: ...

    def admit(self, key: bytes, stamp: float, now: float) -> None: ...


class StoreConflict(Exception):
    """A write would break a uniqueness rule (an identity or PSK id owned by another user)."""


class HeadStore(Protocol):
    """Where the audit chain head is kept besides the signed head file (the state store).

    Rules: a stored head is never lowered (a lower count, or the same count with another MAC,
    is refused by the store). `set_audit_head(..., durable=False)` may return before the head is
    on disk (a power cut may lose it, and later heads with it, never an earlier one); the
    caller makes it durable later with a durable call (firmware/audit/filemedium.py)."""

    def audit_head(self) -> tuple[int, bytes] | None:
        """(count, MAC of the last record) of the audit chain, or None before the first."""
        ...

    def set_audit_head(self, count: int, mac: bytes, durable: bool = True) -> None: ...


class Store(HeadStore, Protocol):
    """Durable state. Every write is one transaction: it is wholly done or not at all."""

    def put_user(self, user: User) -> None:
        """Create or replace the user with `user.identity`; StoreConflict when another user
        already owns one of its identities or its psk_id."""
        ...

    def delete_user(self, identity: str) -> bool: ...

    def user_by_psk_id(self, psk_id: bytes) -> User | None: ...

    def user_by_identity(self, identity: str) -> User | None:
        """The user owning `identity` (canonical) as identity or alias."""
        ...

    def list_users(self) -> list[User]: ...

    def count_users(self) -> int: ...

    def advance_counter(self, identity: str, value: int) -> bool:
        """Record a COUNTER timestamp of `identity`; False (nothing changed) unless it is
        greater than every earlier one."""
        ...

    def add_resolution(self, resolution: Resolution) -> None: ...

    def resolutions(self, ticket_id: bytes) -> list[Resolution]: ...

    def put_warrant(self, warrant: Warrant) -> None:
        """Create or replace the warrant `warrant.liid`; StoreConflict when another warrant
        holds its (non-empty) XID."""
        ...

    def delete_warrant(self, liid: str) -> bool: ...

    def list_warrants(self) -> list[Warrant]: ...

    def warrants_for(self, target: str) -> list[Warrant]: ...

    def put_destination(self, destination: Destination) -> None:
        """Create or replace the X1 destination `destination.did`."""
        ...

    def delete_destination(self, did: str) -> bool: ...

    def list_destinations(self) -> list[Destination]: ...

    def record_key(self, record: KeyRecord) -> None:
        """Insert or replace the record of one key version."""
        ...

    def key_records(self, name: KeyName) -> list[KeyRecord]: ...

    def close(self) -> None: ...
