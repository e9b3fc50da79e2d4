"""Xk key release (TS 33.107 7A.7 get_keys, extended as the SA3 liaison asks).

A DF2 names the target's public identity and its role; keys are released only when the key
management data really belongs to that target in that role (DESIGN.md "Xk GetKeys").

Order of checks (each refusal is a CallerError carrying the contract's reason):
  DF2 role (certificate)                          ROLE_NOT_ALLOWED
  fields: role, liid, correlation id, target      INVALID_REQUEST (caps: firmware/core/fields.py)
  a warrant for (liid, target), active now, naming an identity that holds the caller's DF2 role
                                                  NO_ACTIVE_WARRANT
  TRANSFER_INIT parses, is one, and keeps the RFC's rules (HDR: GENERIC-ID map, no CS ID twice;
  every required payload; one algorithm strength, firmware/mikey/rules.py)  MALFORMED_MESSAGE
  its ticket is ours (MAC in the HSM)             TICKET_INVALID
  now inside the ticket's validity                TICKET_EXPIRED
  the session can overlap the warrant: the ticket's validity did not end before the warrant
  began; the TRANSFER_INIT's T is neither after the warrant's end nor more than the clock skew
  ahead of now (a session already running when the warrant starts is released, TS 33.107
  7A.7.5)                                         NO_ACTIVE_WARRANT
  TRANSFER_INIT MAC with MPKi (with forking also Vi and the Initiator Data under MPKr)
                                                  MESSAGE_AUTH_FAILED
  INITIATOR: target == the ticket's IDRi, which the KMS authenticated when it issued the ticket;
             a TRANSFER_INIT naming another IDRi   TARGET_MISMATCH
  RESPONDER: target allowed by the ticket's IDRr AND named by the KMS's own resolution record
             of this ticket (the responder proved itself with its PSK when it resolved)
                                                  TARGET_MISMATCH
  TRANSFER_RESP, when given: parses and keeps the RFC's rules (#P = 1, Session Data and SPI per
             CS; RANDRr with G, IDRr and RANDRkms with I: MALFORMED_MESSAGE), repeats the
             TRANSFER_INIT's CSB ID and PRF and verifies (MESSAGE_AUTH_FAILED), and
             names the responder the role binds; with key forking its (IDRr, RANDRkms) must be
             one the KMS gave in a resolution (of the target, for RESPONDER)  TARGET_MISMATCH
  TEK, salt and SPI per crypto session both sides use (the TRANSFER_RESP's map when given,
  RFC 6043 4.2.2.3), lengths from the security policy (RFC 3830 6.10.1), from the TGK (K3; TGK'
  via K7 with forking, from the KMS's record) or from the UEs' own KEMACs when the ticket grants
  L / M (RFC 6043 4.2.2.1: opened with MPKi, or with the key the TRANSFER_RESP verified with)

Why the record and not the TRANSFER_RESP binds the responder: a TRANSFER_RESP's MAC proves
nothing about who answered. Without forking it is keyed from MPKi, which the initiator and every
resolver hold; with forking the initiator holds MPKr and can make MPKr' for any IDRr and RANDRkms.

Rules:
- The core decides and raises; the api's one refusal path (firmware/core/refusals.py) turns
  every refusal into alarm + audit record + metric, whatever its reason.
- A release is answered only once its KEY_RELEASE audit record is durable (AuditUnavailable
  otherwise: nothing released). Records hold identities, reasons and ids, never key material.
- Warrant, target and ticket identities are compared in canonical form; certificate identities
  exactly (typed `dns:`/`uri:`, or the bare SAN value of an identity that holds the DF2 role).
- Keys that no UE uses are never released: with key forking and no TRANSFER_RESP, TGK' comes
  from the KMS's record only when it is unambiguous and holds the responder's ID Data and
  RANDRkms; otherwise MALFORMED_MESSAGE (send the TRANSFER_RESP).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from firmware.core.errors import (
    InvalidRequest,
    MalformedMessage,
    MessageAuthFailed,
    NoActiveWarrant,
    RoleNotAllowed,
    TargetMismatch,
    TicketExpired,
    TicketInvalid,
)
from firmware.core.fields import check_field
from firmware.core.ours import (
    NotOurs,
    allowed_responders,
    canonical_or_none,
    in_window,
    open_ours,
    ticket_id,
    ts_unix,
    validity,
)
from firmware.core.ports import AuditSink, Caller, KeyVault, Resolution, Role, Store, Warrant
from firmware.mikey.codec import KeyData, Ticket, Timestamp, TpFlags
from firmware.mikey.constants import DataType, ErrNo, IdRole
from firmware.mikey.crypto import fork_mpkr
from firmware.mikey.errors import MikeyError
from firmware.mikey.kms import verify_initiator_data
from firmware.mikey.message import UE_LIMITS, Message, decode
from firmware.mikey.rules import check_message
from firmware.mikey.ticket import OpenedTicket
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


@dataclass(frozen=True)
class XkSettings:
    kms_identity: str  # canonical; the IDRkms value of our tickets
    clock_skew: float = 60.0


def df2_names(caller: Caller) -> set[str]:
    """What a warrant may list for this caller: each identity holding its DF2 role, typed
    (`dns:df2.example.net`) or as the bare SAN value (`df2.example.net`)."""
    names = set()
    for typed in caller.holding(Role.DF2):
        names.add(typed)
        names.add(typed.partition(":")[2])
    return names


@dataclass(frozen=True)
class _Checked:
    """A request whose fields passed their checks."""

    target: str  # canonical
    role: TargetRole


class KeyRelease:
    """GetKeys: the checks, the derivation and the release record."""

    def __init__(
        self,
        vault: KeyVault,
        store: Store,
        audit: AuditSink,
        settings: XkSettings,
        clock: Callable[[], float],
    ) -> None:
        self.vault, self.store, self.audit = vault, store, audit
        self.settings, self.clock = settings, clock
        self.kms_id = settings.kms_identity.encode()

    def get_keys(self, caller: Caller, request: GetKeysRequest) -> ReleasedKeys:
        """The keys of the target's session; a CallerError subclass when refused, HsmUnavailable
        or AuditUnavailable when the node cannot serve."""
        now = self.clock()
        checked = self._check_request(caller, request)
        try:
            released = self._release(caller, request, checked, now)
        except MikeyError as exc:  # the one boundary: no codec error escapes as INTERNAL
            raise MalformedMessage(f"malformed key management data: {exc}", int(exc.err)) from None
        self.audit.append(
            now,
            "KEY_RELEASE",
            {
                **caller.who(),
                "liid": request.liid,
                "correlation_id": request.correlation_id,
                "target": request.target,
                "role": checked.role.name,
                "csb_id": released.csb_id,
                "cs_ids": [s.cs_id for s in released.sessions],
                "ticket": hashlib.sha256(request.transfer_init).hexdigest()[:32],
            },
        )
        return released

    # --- the checks -------------------------------------------------------------------------

    @staticmethod
    def _check_request(caller: Caller, req: GetKeysRequest) -> _Checked:
        if not caller.holds(Role.DF2):
            raise RoleNotAllowed("the caller's certificate does not hold the DF2 role")
        check_field("liid", req.liid, required=True)
        check_field("correlation_id", req.correlation_id)
        check_field("target_identity", req.target, required=True)
        if req.role is None:
            raise InvalidRequest("target_role must be INITIATOR or RESPONDER")
        target = canonical_or_none(req.target.encode())
        if target is None:
            raise InvalidRequest("target_identity is not a SIP or TEL URI")
        return _Checked(target, req.role)

    def _release(
        self, caller: Caller, req: GetKeysRequest, checked: _Checked, now: float
    ) -> ReleasedKeys:
        target, role = checked.target, checked.role
        warrant = self._warrant(caller, req.liid, target, now)
        init = self._decode(req.transfer_init, DataType.TRANSFER_INIT, "TRANSFER_INIT")
        check_message(init)  # header rules, required payloads, one algorithm strength
        ticket = init.require(Ticket)
        try:
            opened = open_ours(init, self.vault, self.kms_id, self.store)
        except NotOurs as exc:
            raise TicketInvalid(str(exc)) from None
        start, end = validity(opened)
        if not in_window(start, end, now):
            raise TicketExpired("outside the ticket's validity window")
        self._check_overlap(warrant, end, init, now)
        try:
            verify_transfer_init(init, opened.mpki)
            if opened.flags & TpFlags.I:
                check_vi(init)
                verify_initiator_data(init, opened.mpkr)
        except MikeyError:
            raise MessageAuthFailed("TRANSFER_INIT does not verify with the ticket MPKi") from None
        records = self.store.resolutions(ticket_id(ticket.ticket_data))
        if role is TargetRole.INITIATOR:
            self._bind_initiator(init, opened, target)
        else:
            if target not in allowed_responders(opened):
                raise TargetMismatch("the ticket does not allow the target as responder (IDRr)")
            records = [r for r in records if r.responder == target]
            if not records:
                raise TargetMismatch("the KMS has no record of the target resolving this ticket")
        resp: Message | None = None
        resp_key: bytes | None = None
        if req.transfer_resp:
            resp = self._decode(req.transfer_resp, DataType.TRANSFER_RESP, "TRANSFER_RESP")
            check_message(resp, flags=opened.flags)
            keys, resp_key = self._verify_resp(resp, init, opened, target, role, records)
        else:
            keys = self._keys_from_records(opened, records)
        try:
            # every crypto session both sides use, with the keys the UEs really use: their own
            # KEMACs (L, M) opened with MPKi / the key the TRANSFER_RESP verified with
            derived = session_keys(init, keys, resp=resp, mpki=opened.mpki, resp_key=resp_key)
        except MikeyError as exc:
            raise MalformedMessage(f"cannot derive session keys: {exc}", int(exc.err)) from None
        return ReleasedKeys(
            init.header.csb_id,
            tuple(ReleasedSession(k.cs_id, k.tek, k.salt, k.spi) for k in derived),
            end,
        )

    def _warrant(self, caller: Caller, liid: str, target: str, now: float) -> Warrant:
        names = df2_names(caller)
        for warrant in self.store.warrants_for(target):
            if (
                warrant.liid == liid
                and warrant.active_at(now)
                and names.intersection(warrant.df2_identities)
            ):
                return warrant
        raise NoActiveWarrant("no active warrant for this LIID and target names the caller")

    def _check_overlap(
        self, warrant: Warrant, ticket_end: float | None, init: Message, now: float
    ) -> None:
        """The session must be able to overlap the warrant window (TS 33.107 7A.7.5 allows an
        interception that starts mid-session, never one of a session that ended before)."""
        if ticket_end is not None and ticket_end < warrant.valid_from:
            raise NoActiveWarrant("the ticket's validity ended before the warrant began")
        sent = ts_unix(init.require(Timestamp))
        if sent is None:
            return  # a COUNTER carries no time: the ticket's validity bounds the session
        if sent > now + self.settings.clock_skew:
            raise NoActiveWarrant("the TRANSFER_INIT is stamped in the future")
        if sent > warrant.valid_until:
            raise NoActiveWarrant("the TRANSFER_INIT is stamped after the warrant's end")

    @staticmethod
    def _bind_initiator(init: Message, opened: OpenedTicket, target: str) -> None:
        if canonical_or_none(opened.idr_i or b"") != target:
            raise TargetMismatch("the target is not the ticket's initiator (IDRi)")
        sent = init.idr(IdRole.IDRi)
        if sent is not None and canonical_or_none(sent.data) != target:
            raise TargetMismatch("the TRANSFER_INIT names another initiator")

    @staticmethod
    def _decode(data: bytes, expected: DataType, what: str) -> Message:
        try:
            msg = decode(data, limits=UE_LIMITS)  # a CSCF's bytes: bounded before any MAC check
        except MikeyError as exc:
            raise MalformedMessage(f"{what} cannot be parsed: {exc}", int(exc.err)) from None
        if msg.header.data_type != expected:
            raise MalformedMessage(
                f"{what} has data type {int(msg.header.data_type)}", int(ErrNo.INVALID_DT)
            )
        return msg

    def _verify_resp(
        self,
        resp: Message,
        init: Message,
        opened: OpenedTicket,
        target: str,
        role: TargetRole,
        records: Sequence[Resolution],
    ) -> tuple[Sequence[KeyData], bytes]:
        """Check the TRANSFER_RESP against the KMS's records; the session keys it implies and
        the key it verified with (MPKi, or MPKr' with forking), which opens its own KEMAC."""
        forked = bool(opened.flags & TpFlags.I)
        record: Resolution | None = None
        key = opened.mpki
        named: str | None = None
        try:
            if forked:
                id_data, rand_kms = fork_modifier(resp)
                key = fork_mpkr(opened.policy.prf_func, opened.mpkr, id_data, rand_kms)
                named = canonical_or_none(id_data)
                record = next(
                    (r for r in records if r.randr_kms == rand_kms and r.responder == named), None
                )
            verify_transfer_resp(resp, init, key)
        except MikeyError:
            raise MessageAuthFailed("TRANSFER_RESP does not verify") from None
        idr = resp.idr(IdRole.IDRr)
        if idr is not None:
            named = canonical_or_none(idr.data)
        elif named is None and len(allowed := allowed_responders(opened)) == 1:
            # RFC 6043 5.5 / spec Q6: an identity the message leaves out is the ticket's.
            named = next(iter(allowed))
        if role is TargetRole.RESPONDER and named != target:
            raise TargetMismatch("the TRANSFER_RESP does not name the target as responder")
        if not forked:
            return opened.session_keys, key
        if record is None:
            raise TargetMismatch(
                "the TRANSFER_RESP carries an IDRr and RANDRkms the KMS gave to no resolution"
            )
        return self._forked_keys(opened, record), key

    def _keys_from_records(
        self, opened: OpenedTicket, records: Sequence[Resolution]
    ) -> Sequence[KeyData]:
        if not opened.flags & TpFlags.I:
            return opened.session_keys
        if len({(r.id_data, r.randr_kms) for r in records}) != 1:
            # The forked keys depend on who answered: only the TRANSFER_RESP can tell.
            raise MalformedMessage(
                "key forking: TRANSFER_RESP needed to know who answered", int(ErrNo.UNSPECIFIED)
            )
        return self._forked_keys(opened, records[-1])

    @staticmethod
    def _forked_keys(opened: OpenedTicket, record: Resolution) -> Sequence[KeyData]:
        if not record.id_data or not record.randr_kms:
            # TGK' is derived from the exact IDRr bytes the responder sent; a record without
            # them (older rows, or a store that lost them) would yield keys nobody uses.
            raise MalformedMessage(
                "key forking: the resolution record lacks the responder's ID Data;"
                " TRANSFER_RESP needed",
                int(ErrNo.UNSPECIFIED),
            )
        return fork_keys(opened.policy, opened.session_keys, record.id_data, record.randr_kms)
