"""Xk key release (TS 33.107 7A.7 get_keys, extended as the SA3 liaison asks).

A DF2 names the target's public identity and its role; keys are released only when the key
management data really belongs to that target in that role (DESIGN.md "Xk GetKeys").

Order of checks (each refusal names the contract's reason):
  DF2 role (certificate)            ROLE_NOT_ALLOWED
  request fields                    INVALID_REQUEST / MALFORMED_MESSAGE
  active warrant naming this DF2    NO_ACTIVE_WARRANT
  TRANSFER_INIT parses              MALFORMED_MESSAGE
  ticket ours, MAC verifies (HSM)   TICKET_INVALID
  inside the ticket's validity      TICKET_EXPIRED
  TRANSFER_INIT MAC with MPKi       MESSAGE_AUTH_FAILED  (and, with forking, Vi and Vr)
  INITIATOR: target == ticket IDRi  TARGET_MISMATCH
  RESPONDER: target allowed by IDRr TARGET_MISMATCH, and either TRANSFER_RESP verifies (MPKi,
             or MPKr' after forking) and names the target, or, without TRANSFER_RESP, the KMS's
             own resolution record of this ticket names the target
  TEK and salt per crypto session (K3; TGK' via K7 with forking)

Rules:
- A refusal of the PERMISSION_DENIED kind raises an alarm to every watcher and writes an audit
  record before the caller learns of it; a malformed request writes an audit record. The alarm
  is raised even when the record cannot be written (the caller then gets AUDIT_UNAVAILABLE).
- A release is answered only once its audit record is durable; if it cannot be written, nothing
  is released (fail closed). Records hold identities, reasons and ids, never key material.
- Warrant, target and ticket identities are compared in canonical form.
- With key forking and no TRANSFER_RESP, TGK' comes from the KMS's resolution record only when
  that record holds the responder's ID Data and RANDRkms; otherwise MALFORMED_MESSAGE (send the
  TRANSFER_RESP). Keys that no UE uses are never released.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from firmware.core.errors import (
    CallerError,
    InvalidRequest,
    KeyVersionNotFound,
    MalformedMessage,
    MessageAuthFailed,
    NoActiveWarrant,
    PermissionDenied,
    RoleNotAllowed,
    TargetMismatch,
    TicketExpired,
    TicketInvalid,
)
from firmware.core.freshness import ntp64_to_unix
from firmware.core.identity import IdentityError, canonical
from firmware.core.ports import KeyVault, Store
from firmware.core.tickets import ticket_id, version_from_thdr
from firmware.mikey.codec import (
    GenericIdMap,
    KeyData,
    RoleTimestamp,
    Ticket,
    Timestamp,
    TpFlags,
)
from firmware.mikey.constants import DataType, IdRole, TsType
from firmware.mikey.crypto import fork_mpkr
from firmware.mikey.errors import MikeyError
from firmware.mikey.kms import verify_initiator_data
from firmware.mikey.message import Message, decode
from firmware.mikey.ticket import OpenedTicket, open_ticket, peek_ticket
from firmware.mikey.transfer import (
    check_vi,
    fork_keys,
    fork_modifier,
    session_keys,
    verify_transfer_init,
    verify_transfer_resp,
)


class TargetRole(enum.Enum):
    INITIATOR = 1
    RESPONDER = 2


@dataclass(frozen=True)
class Caller:
    """Who asks, as TLS proved it: certificate identities and whether it holds the DF2 role."""

    identities: tuple[str, ...]
    is_df2: bool

    @property
    def name(self) -> str:
        return self.identities[0] if self.identities else "anonymous"


@dataclass(frozen=True)
class GetKeysRequest:
    target: str
    role: TargetRole | None
    transfer_init: bytes = field(repr=False)
    transfer_resp: bytes = field(repr=False)
    liid: str
    correlation_id: str


@dataclass(frozen=True)
class ReleasedSession:
    cs_id: int
    key: bytes = field(repr=False)
    salt: bytes = field(repr=False)
    spi: bytes = b""


@dataclass(frozen=True)
class ReleasedKeys:
    csb_id: int
    sessions: tuple[ReleasedSession, ...]
    valid_until: float | None


class AuditSink(Protocol):
    def append(self, time: float, event: str, fields: dict[str, object]) -> int: ...


class AlarmSink(Protocol):
    def raise_alarm(
        self, reason: str, caller: str, liid: str, correlation_id: str, detail: str
    ) -> object: ...


def _ts_unix(tr: RoleTimestamp | Timestamp) -> float | None:
    if tr.ts_type is TsType.COUNTER:
        return None
    return ntp64_to_unix(int.from_bytes(Timestamp(tr.ts_type, tr.value).as_64(), "big"))


def _canonical_or_none(data: bytes) -> str | None:
    try:
        return canonical(data.decode("utf-8"))
    except (UnicodeDecodeError, IdentityError):
        return None


class KeyRelease:
    """GetKeys: checks, derivation, alarms and audit."""

    def __init__(
        self,
        vault: KeyVault,
        store: Store,
        audit: AuditSink,
        alarms: AlarmSink,
        kms_identity: str,
        clock: Callable[[], float],
    ) -> None:
        self.vault, self.store, self.audit, self.alarms = vault, store, audit, alarms
        self.kms_id = kms_identity.encode()
        self.clock = clock

    def get_keys(self, caller: Caller, request: GetKeysRequest) -> ReleasedKeys:
        now = self.clock()
        try:
            released = self._release(caller, request, now)
        except CallerError as refusal:
            self._refused(caller, request, refusal, now)
            raise
        self.audit.append(
            now,
            "KEY_RELEASE",
            {
                "caller": caller.name,
                "liid": request.liid,
                "correlation_id": request.correlation_id,
                "target": request.target,
                "role": request.role.name if request.role else "",
                "csb_id": released.csb_id,
                "cs_ids": [s.cs_id for s in released.sessions],
                "ticket": hashlib.sha256(request.transfer_init).hexdigest()[:32],
            },
        )
        return released

    def _refused(
        self, caller: Caller, request: GetKeysRequest, refusal: CallerError, now: float
    ) -> None:
        reason = refusal.reason
        try:
            self.audit.append(
                now,
                "KEY_REFUSED",
                {
                    "caller": caller.name,
                    "liid": request.liid,
                    "correlation_id": request.correlation_id,
                    "target": request.target,
                    "role": request.role.name if request.role else "",
                    "reason": reason,
                    "detail": str(refusal),
                },
            )
        finally:  # the alarm goes out even when the record cannot be written
            if isinstance(refusal, PermissionDenied):
                self.alarms.raise_alarm(
                    reason, caller.name, request.liid, request.correlation_id, str(refusal)
                )

    # --- the checks -------------------------------------------------------------------------

    def _release(self, caller: Caller, req: GetKeysRequest, now: float) -> ReleasedKeys:
        if not caller.is_df2:
            raise RoleNotAllowed("the caller's certificate does not hold the DF2 role")
        if req.role is None:
            raise InvalidRequest("target_role must be INITIATOR or RESPONDER")
        if not req.liid:
            raise InvalidRequest("liid is required")
        target = _canonical_or_none(req.target.encode())
        if target is None:
            raise InvalidRequest("target_identity is not a SIP or TEL URI")
        self._check_warrant(caller, req.liid, target, now)
        init = self._decode(req.transfer_init, DataType.TRANSFER_INIT, "TRANSFER_INIT")
        opened, ticket = self._open_ticket(init)
        self._check_validity(opened, now)
        try:
            verify_transfer_init(init, opened.mpki)
            if opened.flags & TpFlags.I:
                check_vi(init)
                verify_initiator_data(init, opened.mpkr)
        except MikeyError:
            raise MessageAuthFailed(
                "TRANSFER_INIT does not verify with the ticket's MPKi"
            ) from None
        keys: Sequence[KeyData] = opened.session_keys
        resp: Message | None = None
        if req.role is TargetRole.INITIATOR:
            if _canonical_or_none(opened.idr_i or b"") != target:
                raise TargetMismatch("the target is not the ticket's initiator (IDRi)")
            sent = init.idr(IdRole.IDRi)
            if sent is not None and _canonical_or_none(sent.data) != target:
                raise TargetMismatch("the TRANSFER_INIT names another initiator")
        allowed = {_canonical_or_none(r) for r in opened.idr_r}
        if req.role is TargetRole.RESPONDER and target not in allowed:
            raise TargetMismatch("the ticket does not allow the target as responder (IDRr)")
        if req.transfer_resp:
            resp = self._decode(req.transfer_resp, DataType.TRANSFER_RESP, "TRANSFER_RESP")
            keys = self._verify_resp(resp, init, opened, target, req.role)
        elif req.role is TargetRole.RESPONDER or opened.flags & TpFlags.I:
            keys = self._from_resolution(ticket, opened, target, req.role)
        try:
            derived = session_keys(init, keys, resp=resp)
        except MikeyError as exc:
            raise MalformedMessage(f"cannot derive session keys: {exc}", int(exc.err)) from None
        spis = {}
        if isinstance(init.header.cs_map, GenericIdMap):
            spis = {e.cs_id: e.spi for e in init.header.cs_map.entries}
        tre = opened.tre
        return ReleasedKeys(
            init.header.csb_id,
            tuple(ReleasedSession(k.cs_id, k.tek, k.salt, spis.get(k.cs_id, b"")) for k in derived),
            _ts_unix(tre) if tre is not None else None,
        )

    def _check_warrant(self, caller: Caller, liid: str, target: str, now: float) -> None:
        for warrant in self.store.warrants_for(target):
            if (
                warrant.liid == liid
                and warrant.active_at(now)
                and set(warrant.df2_identities) & set(caller.identities)
            ):
                return
        raise NoActiveWarrant("no active warrant for this LIID and target names the caller")

    @staticmethod
    def _decode(data: bytes, expected: DataType, what: str) -> Message:
        try:
            msg = decode(data)
        except MikeyError as exc:
            raise MalformedMessage(f"{what} cannot be parsed: {exc}", int(exc.err)) from None
        if msg.header.data_type != expected:
            raise MalformedMessage(f"{what} has data type {msg.header.data_type}", 11)
        return msg

    def _open_ticket(self, init: Message) -> tuple[OpenedTicket, Ticket]:
        ticket = init.find(Ticket)
        if ticket is None:
            raise MalformedMessage("TRANSFER_INIT carries no TICKET", 14)
        raw = init.ticket_bytes()
        try:
            policy, data = peek_ticket(raw)
            version = version_from_thdr(data.thdr.data)
            prf = policy.prf_func
            opened = open_ticket(raw, lambda d: self.vault.ticket_hmac(version, prf, d))
        except (MikeyError, KeyVersionNotFound):
            raise TicketInvalid("not a valid ticket of this KMS") from None
        if opened.idr_kms is not None and opened.idr_kms != self.kms_id:
            raise TicketInvalid("the ticket names another KMS")
        return opened, ticket

    @staticmethod
    def _check_validity(opened: OpenedTicket, now: float) -> None:
        start = _ts_unix(opened.trs) if opened.trs is not None else None
        end = _ts_unix(opened.tre) if opened.tre is not None else None
        if (start is not None and now < start) or (end is not None and now > end):
            raise TicketExpired("outside the ticket's validity window")

    def _verify_resp(
        self,
        resp: Message,
        init: Message,
        opened: OpenedTicket,
        target: str,
        role: TargetRole,
    ) -> Sequence[KeyData]:
        keys: Sequence[KeyData] = opened.session_keys
        key = opened.mpki
        named: str | None = None
        try:
            if opened.flags & TpFlags.I:
                id_data, rand_kms = fork_modifier(resp)
                key = fork_mpkr(opened.policy.prf_func, opened.mpkr, id_data, rand_kms)
                keys = fork_keys(opened.policy, keys, id_data, rand_kms)
                named = _canonical_or_none(id_data)
            verify_transfer_resp(resp, init, key)
        except MikeyError:
            raise MessageAuthFailed("TRANSFER_RESP does not verify") from None
        idr = resp.idr(IdRole.IDRr)
        if idr is not None:
            named = _canonical_or_none(idr.data)
        if role is TargetRole.RESPONDER:
            if named is None:
                # Without forking a TRANSFER_RESP binds no responder: the KMS's record must.
                self._from_resolution_check(init, target)
            elif named != target:
                raise TargetMismatch("the TRANSFER_RESP names another responder")
        return keys

    def _from_resolution_check(self, init: Message, target: str) -> None:
        ticket = init.find(Ticket)
        assert ticket is not None
        if not any(
            r.responder == target for r in self.store.resolutions(ticket_id(ticket.ticket_data))
        ):
            raise TargetMismatch("the KMS has no record of the target resolving this ticket")

    def _from_resolution(
        self, ticket: Ticket, opened: OpenedTicket, target: str, role: TargetRole
    ) -> Sequence[KeyData]:
        records = self.store.resolutions(ticket_id(ticket.ticket_data))
        if role is TargetRole.RESPONDER:
            records = [r for r in records if r.responder == target]
            if not records:
                raise TargetMismatch("the KMS has no record of the target resolving this ticket")
        if not opened.flags & TpFlags.I:
            return opened.session_keys
        if len({(r.id_data, r.randr_kms) for r in records}) != 1:
            # INITIATOR without TRANSFER_RESP: the forked keys depend on who answered.
            raise MalformedMessage("key forking: TRANSFER_RESP needed to know who answered", 12)
        record = records[-1]
        if not record.id_data or not record.randr_kms:
            # TGK' is derived from the exact IDRr bytes the responder sent; a record without
            # them (older rows, or a store that lost them) would yield keys nobody uses.
            raise MalformedMessage(
                "key forking: the resolution record lacks the responder's ID Data;"
                " TRANSFER_RESP needed",
                12,
            )
        return fork_keys(opened.policy, opened.session_keys, record.id_data, record.randr_kms)
