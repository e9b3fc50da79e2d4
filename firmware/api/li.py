"""LI listener servicers: XkService.GetKeys and AdminService (contract kms.proto).

Rules:
- Every LI RPC passes `Gate.serve` (or `Gate.open_stream`): the caller comes from its verified
  client certificate only (firmware/api/roles.py); GetKeys needs DF2, every AdminService RPC
  needs ADMIN except WatchAlarms (ADMIN or DF2); a request that did not decode
  (server.Undecodable) is refused INVALID_ARGUMENT.
- Whatever refuses a request (role, decoding, field caps, the core's checks, the HSM, the audit
  log, or an error nobody planned for) goes through the one refusal path
  (firmware/core/refusals.py: alarm + audit record + metric) and then the one status table
  (firmware/api/status.py). Nothing else answers a refusal. Unplanned errors are logged and
  answered INTERNAL without detail.
- Administrative changes are audited before they are made by the core (firmware/core/admin.py).
- WatchAlarms subscribes the caller with its visibility (firmware/audit/alarms.py): ADMIN sees
  every alarm, a DF2 only its own requests' alarms and node alarms.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2

from firmware.api import status
from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.api.roles import RoleResolver
from firmware.api.server import Undecodable
from firmware.audit.alarms import Alarm, AlarmBus
from firmware.audit.verify import AuditReport
from firmware.core.admin import Admin
from firmware.core.errors import InvalidRequest, KmsError, RoleNotAllowed
from firmware.core.ports import Caller, KeyName, KeyState, Role
from firmware.core.refusals import Refusals
from firmware.core.xk import GetKeysRequest, KeyRelease, TargetRole

log = logging.getLogger("kmsnode.api")

T = TypeVar("T")

_ROLES = {1: TargetRole.INITIATOR, 2: TargetRole.RESPONDER}
_STATES = {
    KeyState.ACTIVE: kms_pb2.KeyVersion.ACTIVE,
    KeyState.DECRYPT_ONLY: kms_pb2.KeyVersion.DECRYPT_ONLY,
    KeyState.DESTROYED: kms_pb2.KeyVersion.DESTROYED,
    KeyState.PENDING: kms_pb2.KeyVersion.PENDING,
}


def _ts(unix: float | None) -> timestamp_pb2.Timestamp | None:
    if unix is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(unix * 1e9))
    return stamp


def _unix(stamp: timestamp_pb2.Timestamp) -> float:
    return float(stamp.ToNanoseconds()) / 1e9


def _described(method: str, request: Any) -> dict[str, str]:
    """The request's identifying fields for the refusal record (fields.describe caps them)."""
    if isinstance(request, Undecodable):
        return {}
    if method == "GetKeys":
        return {
            "liid": request.liid,
            "correlation_id": request.correlation_id,
            "target": request.target_identity,
            "role": kms_pb2.TargetRole.Name(request.target_role)
            if request.target_role in kms_pb2.TargetRole.values()
            else str(request.target_role),
        }
    if method in ("PutUser", "DeleteUser"):
        return {"identity": request.identity}
    if method == "PutWarrant":
        return {"liid": request.liid, "target": request.target_identity}
    if method == "DeleteWarrant":
        return {"liid": request.liid}
    return {}


class Gate:
    """Role, decoding and the one refusal path, for every LI RPC."""

    def __init__(self, roles: RoleResolver, refusals: Refusals) -> None:
        self.roles, self.refusals = roles, refusals

    def caller(self, context: Any) -> Caller:
        return self.roles.caller_of(context)

    def _admit(self, caller: Caller, method: str, request: Any, roles: tuple[Role, ...]) -> None:
        if not caller.roles.intersection(roles):
            needs = " or ".join(r.value.upper() for r in roles)
            why = "its certificate is revoked" if caller.revoked else "its certificate holds none"
            raise RoleNotAllowed(f"{method} needs role {needs}; {why}")
        if isinstance(request, Undecodable):
            raise InvalidRequest(f"the request does not decode ({request.error})")

    def serve(
        self,
        context: Any,
        method: str,
        request: Any,
        roles: tuple[Role, ...],
        fn: Callable[[Caller], T],
    ) -> T:
        """Run `fn(caller)` for an admitted caller; refuse (alarm + audit + metric + status)
        whatever goes wrong."""
        caller = self.caller(context)
        try:
            self._admit(caller, method, request, roles)
            return fn(caller)
        except KmsError as exc:
            status.abort(
                context, self.refusals.refuse(caller, method, exc, _described(method, request))
            )
        except Exception:
            log.exception("LI RPC %s failed", method)
            internal = KmsError("internal error")
            status.abort(
                context, self.refusals.refuse(caller, method, internal, _described(method, request))
            )

    def guard_reflection(self, context: Any) -> None:
        """Reflection answers only a caller that holds a role."""
        self.serve(context, "ServerReflectionInfo", None, tuple(Role), lambda _: None)


class XkServicer(kms_pb2_grpc.XkServiceServicer):
    def __init__(self, release: KeyRelease, gate: Gate) -> None:
        self.release, self.gate = release, gate

    def GetKeys(self, request: Any, context: Any) -> Any:
        def release(caller: Caller) -> Any:
            keys = self.release.get_keys(
                caller,
                GetKeysRequest(
                    target=request.target_identity,
                    role=_ROLES.get(request.target_role),
                    transfer_init=bytes(request.transfer_init),
                    transfer_resp=bytes(request.transfer_resp),
                    liid=request.liid,
                    correlation_id=request.correlation_id,
                ),
            )
            return kms_pb2.GetKeysResponse(
                csb_id=keys.csb_id,
                sessions=[
                    kms_pb2.CryptoSessionKeys(
                        cs_id=s.cs_id, session_key=s.key, salt=s.salt, spi=s.spi
                    )
                    for s in keys.sessions
                ],
                valid_until=_ts(keys.valid_until),
            )

        return self.gate.serve(context, "GetKeys", request, (Role.DF2,), release)


def _warrant(w: Any) -> Any:
    return kms_pb2.Warrant(
        liid=w.liid,
        target_identity=w.target,
        valid_from=_ts(w.valid_from),
        valid_until=_ts(w.valid_until),
        df2_identities=list(w.df2_identities),
    )


def _key_version(v: Any) -> Any:
    return kms_pb2.KeyVersion(
        name=v.name.value, version=v.version, state=_STATES[v.state], created=_ts(v.created)
    )


class AdminServicer(kms_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        admin: Admin,
        gate: Gate,
        alarms: AlarmBus,
        verify_audit: Callable[[], AuditReport],
    ) -> None:
        self.admin, self.gate, self.alarms = admin, gate, alarms
        self.verify_audit = verify_audit

    def _admin(self, context: Any, method: str, request: Any, fn: Callable[[Caller], T]) -> T:
        return self.gate.serve(context, method, request, (Role.ADMIN,), fn)

    def PutUser(self, request: Any, context: Any) -> Any:
        def put(caller: Caller) -> Any:
            _, generated = self.admin.put_user(
                caller,
                request.identity,
                list(request.aliases),
                bytes(request.psk),
                bytes(request.psk_id),
            )
            return kms_pb2.PutUserResponse(psk=generated or b"")

        return self._admin(context, "PutUser", request, put)

    def DeleteUser(self, request: Any, context: Any) -> Any:
        def delete(caller: Caller) -> Any:
            self.admin.delete_user(caller, request.identity)
            return kms_pb2.DeleteUserResponse()

        return self._admin(context, "DeleteUser", request, delete)

    def PutWarrant(self, request: Any, context: Any) -> Any:
        def put(caller: Caller) -> Any:
            return _warrant(
                self.admin.put_warrant(
                    caller,
                    request.liid,
                    request.target_identity,
                    _unix(request.valid_from),
                    _unix(request.valid_until),
                    list(request.df2_identities),
                )
            )

        return self._admin(context, "PutWarrant", request, put)

    def DeleteWarrant(self, request: Any, context: Any) -> Any:
        def delete(caller: Caller) -> Any:
            self.admin.delete_warrant(caller, request.liid)
            return kms_pb2.DeleteWarrantResponse()

        return self._admin(context, "DeleteWarrant", request, delete)

    def ListWarrants(self, request: Any, context: Any) -> Any:
        return self._admin(
            context,
            "ListWarrants",
            request,
            lambda _: kms_pb2.ListWarrantsResponse(
                warrants=[_warrant(w) for w in self.admin.list_warrants()]
            ),
        )

    def RotateTicketKey(self, request: Any, context: Any) -> Any:
        return self._admin(
            context,
            "RotateTicketKey",
            request,
            lambda caller: _key_version(
                self.admin.rotate(caller, KeyName.TICKET_PROTECTION, staged=request.staged)
            ),
        )

    def ActivateTicketKey(self, request: Any, context: Any) -> Any:
        return self._admin(
            context,
            "ActivateTicketKey",
            request,
            lambda caller: _key_version(
                self.admin.activate(caller, KeyName.TICKET_PROTECTION, request.version)
            ),
        )

    def ListKeyVersions(self, request: Any, context: Any) -> Any:
        return self._admin(
            context,
            "ListKeyVersions",
            request,
            lambda _: kms_pb2.ListKeyVersionsResponse(
                versions=[
                    _key_version(v) for name in KeyName for v in self.admin.key_versions(name)
                ]
            ),
        )

    def WatchAlarms(self, request: Any, context: Any) -> Iterator[Any]:
        subscription = self.gate.serve(
            context,
            "WatchAlarms",
            request,
            (Role.ADMIN, Role.DF2),
            self.alarms.subscribe,
        )
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
        # Every chain of the audit medium (PostgreSQL: every node's), this node's own as of one
        # commit and against what its writer knows it wrote (firmware/audit/log.py).
        def check(_: Caller) -> Any:
            report = self.verify_audit()
            if not report.intact:
                log.warning("VerifyAudit: %s", report.detail)
            return kms_pb2.VerifyAuditResponse(
                intact=report.intact, records=report.records, first_bad_record=report.first_bad
            )

        return self._admin(context, "VerifyAudit", request, check)


def _alarm(alarm: Alarm) -> Any:
    return kms_pb2.Alarm(
        time=_ts(alarm.time),
        reason=alarm.reason,
        caller=alarm.caller,
        liid=alarm.liid,
        correlation_id=alarm.correlation_id,
        detail=alarm.detail,
    )
