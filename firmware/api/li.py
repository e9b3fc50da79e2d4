"""LI listener servicers: XkService.GetKeys and AdminService (contract kms.proto).

Rules:
- The caller's role comes from its verified client certificate only (firmware/api/roles.py).
  GetKeys needs DF2; every AdminService RPC needs ADMIN, except WatchAlarms (ADMIN or DF2).
- A refused role raises a ROLE_NOT_ALLOWED alarm and writes an audit record before the RPC ends.
- Administrative changes are written to the audit log before they are made (audit before
  acting); if the record cannot be written the change is refused. Records never hold PSKs.
- Every core error goes through the one table in firmware/api/status.py; anything unplanned is
  logged and answered INTERNAL without detail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from google.protobuf import timestamp_pb2

from firmware.api import status
from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.api.roles import Caller, Role, caller_of
from firmware.audit.alarms import Alarm, AlarmBus
from firmware.audit.log import verify as verify_audit
from firmware.core.admin import Admin
from firmware.core.errors import KmsError, RoleNotAllowed
from firmware.core.ports import KeyName, KeyState
from firmware.core.xk import Caller as XkCaller
from firmware.core.xk import GetKeysRequest, KeyRelease, TargetRole

log = logging.getLogger("kmsnode.api")

_ROLES = {1: TargetRole.INITIATOR, 2: TargetRole.RESPONDER}
_STATES = {
    KeyState.ACTIVE: kms_pb2.KeyVersion.ACTIVE,
    KeyState.DECRYPT_ONLY: kms_pb2.KeyVersion.DECRYPT_ONLY,
    KeyState.DESTROYED: kms_pb2.KeyVersion.DESTROYED,
}


def _ts(unix: float | None) -> timestamp_pb2.Timestamp | None:
    if unix is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(unix * 1e9))
    return stamp


def _unix(stamp: timestamp_pb2.Timestamp) -> float:
    return float(stamp.ToNanoseconds()) / 1e9


class Guard:
    """Role checks and the audit-before-acting wrapper shared by the LI servicers."""

    def __init__(
        self,
        role_map: Mapping[str, Sequence[str]],
        alarms: AlarmBus,
        audit: Any,
        clock: Callable[[], float],
    ) -> None:
        self.role_map, self.alarms, self.audit, self.clock = role_map, alarms, audit, clock

    def caller(self, context: Any) -> Caller:
        return caller_of(context, self.role_map)

    def require(self, context: Any, method: str, *roles: Role) -> Caller:
        caller = self.caller(context)
        if caller.roles & set(roles):
            return caller
        detail = f"{method} needs role {' or '.join(r.value.upper() for r in roles)}"
        try:
            self.audit.append(
                self.clock(), "ROLE_REFUSED", {"caller": caller.name, "method": method}
            )
        except KmsError:
            log.error("audit record of a refused role could not be written")
        self.alarms.raise_alarm("ROLE_NOT_ALLOWED", caller.name, "", "", detail)
        status.abort(context, RoleNotAllowed(detail))

    def run(self, context: Any, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except KmsError as exc:
            status.abort(context, exc)
        except Exception:
            log.exception("LI RPC failed")
            status.internal(context)

    def audited(
        self,
        context: Any,
        caller: Caller,
        event: str,
        fields: dict[str, object],
        fn: Callable[[], Any],
    ) -> Any:
        def act() -> Any:
            self.audit.append(self.clock(), event, {"caller": caller.name, **fields})
            return fn()

        return self.run(context, act)


class XkServicer(kms_pb2_grpc.XkServiceServicer):
    def __init__(self, release: KeyRelease, guard: Guard) -> None:
        self.release, self.guard = release, guard

    def GetKeys(self, request: Any, context: Any) -> Any:
        caller = self.guard.caller(context)
        req = GetKeysRequest(
            target=request.target_identity,
            role=_ROLES.get(request.target_role),
            transfer_init=bytes(request.transfer_init),
            transfer_resp=bytes(request.transfer_resp),
            liid=request.liid,
            correlation_id=request.correlation_id,
        )
        xk_caller = XkCaller(caller.identities, Role.DF2 in caller.roles)
        keys = self.guard.run(context, lambda: self.release.get_keys(xk_caller, req))
        return kms_pb2.GetKeysResponse(
            csb_id=keys.csb_id,
            sessions=[
                kms_pb2.CryptoSessionKeys(cs_id=s.cs_id, session_key=s.key, salt=s.salt, spi=s.spi)
                for s in keys.sessions
            ],
            valid_until=_ts(keys.valid_until),
        )


class AdminServicer(kms_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        admin: Admin,
        guard: Guard,
        alarms: AlarmBus,
        audit_path: Any,
        audit_mac: Callable[[bytes], bytes],
    ) -> None:
        self.admin, self.guard, self.alarms = admin, guard, alarms
        self.audit_path, self.audit_mac = audit_path, audit_mac

    def PutUser(self, request: Any, context: Any) -> Any:
        caller = self.guard.require(context, "PutUser", Role.ADMIN)
        fields = {"identity": request.identity, "aliases": list(request.aliases)}
        _, generated = self.guard.audited(
            context,
            caller,
            "ADMIN_PUT_USER",
            fields,
            lambda: self.admin.put_user(
                request.identity, list(request.aliases), bytes(request.psk), bytes(request.psk_id)
            ),
        )
        return kms_pb2.PutUserResponse(psk=generated or b"")

    def DeleteUser(self, request: Any, context: Any) -> Any:
        caller = self.guard.require(context, "DeleteUser", Role.ADMIN)
        self.guard.audited(
            context,
            caller,
            "ADMIN_DELETE_USER",
            {"identity": request.identity},
            lambda: self.admin.delete_user(request.identity),
        )
        return kms_pb2.DeleteUserResponse()

    @staticmethod
    def _warrant(w: Any) -> Any:
        return kms_pb2.Warrant(
            liid=w.liid,
            target_identity=w.target,
            valid_from=_ts(w.valid_from),
            valid_until=_ts(w.valid_until),
            df2_identities=list(w.df2_identities),
        )

    def PutWarrant(self, request: Any, context: Any) -> Any:
        caller = self.guard.require(context, "PutWarrant", Role.ADMIN)
        fields = {
            "liid": request.liid,
            "target": request.target_identity,
            "df2_identities": list(request.df2_identities),
        }
        warrant = self.guard.audited(
            context,
            caller,
            "ADMIN_PUT_WARRANT",
            fields,
            lambda: self.admin.put_warrant(
                request.liid,
                request.target_identity,
                _unix(request.valid_from),
                _unix(request.valid_until),
                list(request.df2_identities),
            ),
        )
        return self._warrant(warrant)

    def DeleteWarrant(self, request: Any, context: Any) -> Any:
        caller = self.guard.require(context, "DeleteWarrant", Role.ADMIN)
        self.guard.audited(
            context,
            caller,
            "ADMIN_DELETE_WARRANT",
            {"liid": request.liid},
            lambda: self.admin.delete_warrant(request.liid),
        )
        return kms_pb2.DeleteWarrantResponse()

    def ListWarrants(self, request: Any, context: Any) -> Any:
        self.guard.require(context, "ListWarrants", Role.ADMIN)
        warrants = self.guard.run(context, self.admin.list_warrants)
        return kms_pb2.ListWarrantsResponse(warrants=[self._warrant(w) for w in warrants])

    def RotateTicketKey(self, request: Any, context: Any) -> Any:
        caller = self.guard.require(context, "RotateTicketKey", Role.ADMIN)
        view = self.guard.audited(
            context,
            caller,
            "ADMIN_ROTATE_TICKET_KEY",
            {},
            lambda: self.admin.rotate(KeyName.TICKET_PROTECTION),
        )
        return kms_pb2.KeyVersion(
            name=view.name.value,
            version=view.version,
            state=_STATES[view.state],
            created=_ts(view.created),
        )

    def ListKeyVersions(self, request: Any, context: Any) -> Any:
        self.guard.require(context, "ListKeyVersions", Role.ADMIN)

        def collect() -> list[Any]:
            return [v for name in KeyName for v in self.admin.key_versions(name)]

        versions = self.guard.run(context, collect)
        return kms_pb2.ListKeyVersionsResponse(
            versions=[
                kms_pb2.KeyVersion(
                    name=v.name.value,
                    version=v.version,
                    state=_STATES[v.state],
                    created=_ts(v.created),
                )
                for v in versions
            ]
        )

    def WatchAlarms(self, request: Any, context: Any) -> Iterator[Any]:
        self.guard.require(context, "WatchAlarms", Role.ADMIN, Role.DF2)
        subscription = self.alarms.subscribe()
        context.add_callback(subscription.close)
        context.send_initial_metadata(())  # the watcher knows it is subscribed
        try:
            while context.is_active():
                alarm = subscription.get(timeout=0.5)
                if alarm is not None:
                    yield _alarm(alarm)
        finally:
            subscription.close()

    def VerifyAudit(self, request: Any, context: Any) -> Any:
        self.guard.require(context, "VerifyAudit", Role.ADMIN)
        # The node keeps writing while it verifies: check the log as of one commit, against
        # what the writer itself knows it wrote (firmware/audit/log.py).
        snapshot = getattr(self.guard.audit, "snapshot", None)
        result = self.guard.run(
            context,
            lambda: verify_audit(
                self.audit_path, self.audit_mac, snapshot() if snapshot is not None else None
            ),
        )
        return kms_pb2.VerifyAuditResponse(
            intact=result.intact, records=result.records, first_bad_record=result.first_bad
        )


def _alarm(alarm: Alarm) -> Any:
    return kms_pb2.Alarm(
        time=_ts(alarm.time),
        reason=alarm.reason,
        caller=alarm.caller,
        liid=alarm.liid,
        correlation_id=alarm.correlation_id,
        detail=alarm.detail,
    )
