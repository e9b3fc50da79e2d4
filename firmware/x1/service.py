"""The [x1_listener] handler: X1Request containers in, X1Response containers out (ETSI TS 103
221-1 clause 7.2: one POST per container; X1-level errors are X1 responses with HTTP 200).

Rules:
- The caller comes from the verified TLS client certificate only (firmware/api/roles.py); it
  must hold the X1 role, else 403 without an X1 body (the ADMF's certificate is not an ADMF's:
  an access decision of the HTTP layer, made before any XML is read).
- Every refused request goes through the one refusal path (firmware/core/refusals.py: alarm +
  audit record + metric) before it is answered: a role refusal, a container that does not
  parse (X1TopLevelErrorResponse, admfIdentifier taken from the certificate), and every
  message answered with ErrorResponse (each its own refusal, method `X1.<MessageType>`).
- Header checks per message (TS 103 221-1 6.1, 8.2.4): version v1.x.y (1020), a lower-case UUID
  transaction id and a six-digit timestamp (1010), neIdentifier = ours (1060), admfIdentifier
  one of the configured ones (1040) and, with admf_binding = certificate-uid, a Subject UID of
  the client certificate (1030).
- The messages of a container are answered in order in one X1Response; a message type we do
  not serve is 1080. Errors carry the most specific code we have: the core's TaskRefused code,
  else the generic code of the message type (3000 ActivateTask, 3001 ModifyTask, ...), 1000
  for the node's own failures (audit, store, HSM unavailable). Descriptions never echo values.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Callable
from typing import NamedTuple

from lxml import etree

from firmware.api.https import Request, Response
from firmware.api.metrics import Metrics
from firmware.api.roles import RoleResolver, certificate_facts
from firmware.config import X1Config
from firmware.core.errors import CallerError, InvalidRequest, KmsError, RoleNotAllowed, TaskRefused
from firmware.core.ports import Caller, Destination, Role, Warrant
from firmware.core.refusals import Refusals
from firmware.core.tasks import OPEN_END, Tasks, TaskSpec
from firmware.x1 import codec
from firmware.x1.codec import MessageError, RequestMessage, ResponseHeader, Unparseable

log = logging.getLogger("kmsnode.x1")

GENERIC = 1000
NE_MISMATCH, ADMF_MISMATCH, ADMF_UNEXPECTED, NE_UNEXPECTED = 1050, 1030, 1040, 1060
_DEFAULT_CODES = {
    "ActivateTask": 3000,
    "ModifyTask": 3001,
    "DeactivateTask": 4000,
    "DeactivateAllTasks": 5000,
    "CreateDestination": 6000,
    "ModifyDestination": 6001,
    "RemoveDestination": 7000,
}
_DELIVERY = ("X2Only", "X3Only", "X2andX3")
_TASK_DETAILS = (
    "xId",
    "targetIdentifiers",
    "deliveryType",
    "listOfDIDs",
    "listOfMediationDetails",
    "correlationID",
    "implicitDeactivationAllowed",
    "productID",
    "listOfServiceTypes",
    "taskDetailsExtensions",
    "listOfTrafficPolicyReferences",
)
_MEDIATION = (
    "LIID",
    "deliveryType",
    "StartTime",
    "EndTime",
    "listOfDIDs",
    "mediationDetailsExtensions",
    "serviceScopingOptions",
    "listOfTrafficPolicyReferences",
)
_LIID = r"([!-~]{1,25})|([0-9a-f]{26,50})"


class Out(NamedTuple):
    """Where a message's answer goes: the container being built and the echoed header."""

    response: codec.Response
    echo: ResponseHeader


class X1Service:
    def __init__(
        self,
        tasks: Tasks,
        refusals: Refusals,
        resolver: RoleResolver,
        settings: X1Config,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.tasks, self.refusals, self.resolver = tasks, refusals, resolver
        self.settings, self.metrics, self.clock = settings, metrics, clock
        self._handlers: dict[str, Callable[[Caller, RequestMessage, Out], None]] = {
            "ActivateTask": self._activate,
            "ModifyTask": self._modify,
            "DeactivateTask": self._deactivate,
            "DeactivateAllTasks": self._deactivate_all,
            "GetTaskDetails": self._task_details,
            "ListAllDetails": self._list_all,
            "CreateDestination": self._create_destination,
            "ModifyDestination": self._modify_destination,
            "RemoveDestination": self._remove_destination,
            "GetDestinationDetails": self._destination_details,
            "Ping": self._empty,
            "Keepalive": self._empty,
        }

    # --- HTTP -------------------------------------------------------------------------------

    def __call__(self, request: Request) -> Response:
        s = self.settings
        if s.request_content_types:
            kind = (request.header("content-type") or "").split(";")[0].strip().lower()
            if kind not in {t.lower() for t in s.request_content_types}:
                return Response(415, (("Accept", ", ".join(s.request_content_types)),))
        caller = self.resolver.caller_of_certificate(request.peer_certificate, request.tls_version)
        uids = self._uids(request.peer_certificate)
        if not caller.holds(Role.X1):
            why = "its certificate is revoked" if caller.revoked else "its certificate holds none"
            self.refusals.refuse(caller, "X1", RoleNotAllowed(f"X1 needs role X1; {why}"))
            self.metrics.requests.labels("X1", "ROLE_NOT_ALLOWED").inc()
            return Response(403)
        try:
            messages = codec.parse_request(request.body, s.max_depth, s.max_messages)
        except Unparseable as exc:
            self.refusals.refuse(caller, "X1", InvalidRequest(f"X1 request refused: {exc}"))
            self.metrics.requests.labels("X1", "TOP_LEVEL_ERROR").inc()
            admf = uids[0] if uids else caller.name
            body = codec.top_level_error(admf, s.ne_identifier, self._now(), s.version)
            return self._xml(body)
        response = codec.Response()
        for message in messages:
            self._one(caller, uids, message, response)
        return self._xml(response.bytes())

    def _xml(self, body: bytes) -> Response:
        return Response(200, (("Content-Type", self.settings.response_content_type),), body)

    def _now(self) -> str:
        return codec.now_timestamp(self.clock())

    def _uids(self, der: bytes | None) -> tuple[str, ...]:
        if der is None:
            return ()
        facts = certificate_facts(ssl.DER_cert_to_PEM_cert(der).encode("ascii"))
        return facts.subject_uids if facts is not None else ()

    # --- one message ------------------------------------------------------------------------

    def _check_identifiers(self, message: RequestMessage, uids: tuple[str, ...]) -> None:
        s, header = self.settings, message.header
        codec.check_header(header)
        if header.ne != s.ne_identifier:
            raise MessageError(NE_UNEXPECTED, "neIdentifier is not this NE's")
        if s.admf_identifiers and header.admf not in s.admf_identifiers:
            raise MessageError(ADMF_UNEXPECTED, "admfIdentifier is not an expected ADMF")
        if s.admf_binding == "certificate-uid" and header.admf not in uids:
            raise MessageError(ADMF_MISMATCH, "admfIdentifier is not the certificate's UID")

    def _one(
        self,
        caller: Caller,
        uids: tuple[str, ...],
        message: RequestMessage,
        response: codec.Response,
    ) -> None:
        kind, header = message.kind, message.header
        echo = ResponseHeader(
            header.admf, header.ne, self._now(), self.settings.version, header.transaction_id
        )
        method = f"X1.{kind}"
        try:
            self._check_identifiers(message, uids)
            handler = self._handlers.get(kind)
            if handler is None:
                raise MessageError(codec.UNSUPPORTED_REQUEST, f"{kind} is not supported")
            handler(caller, message, Out(response, echo))
        except MessageError as exc:
            self._refuse(caller, method, message, TaskRefused(exc.code, str(exc)), response, echo)
            return
        except KmsError as exc:
            self._refuse(caller, method, message, exc, response, echo)
            return
        except Exception:
            log.exception("X1 %s failed", kind)
            self._refuse(caller, method, message, KmsError("internal error"), response, echo)
            return
        self.metrics.requests.labels(method, "OK").inc()

    def _refuse(
        self,
        caller: Caller,
        method: str,
        message: RequestMessage,
        error: KmsError,
        response: codec.Response,
        echo: ResponseHeader,
    ) -> None:
        fields = {"x1_transaction_id": message.header.transaction_id}
        answer = self.refusals.refuse(caller, method, error, fields)
        if isinstance(answer, TaskRefused):
            code = answer.code
        elif isinstance(answer, CallerError) and not isinstance(answer, RoleNotAllowed):
            code = _DEFAULT_CODES.get(message.kind, GENERIC)
        else:
            code = GENERIC
        self.metrics.requests.labels(method, f"X1_{code}").inc()
        response.error(message.kind, echo, code, str(answer))

    # --- tasks ------------------------------------------------------------------------------

    def _spec(self, message: RequestMessage) -> TaskSpec:
        details = codec.children(
            codec.body(message, "taskDetails").one("taskDetails"), *_TASK_DETAILS
        )
        xid = codec.uuid(details.text("xId"), "xId")
        target = codec.target_identity(details.one("targetIdentifiers"))
        delivery = details.text("deliveryType")
        if delivery not in _DELIVERY:
            raise MessageError(codec.SYNTAX, "deliveryType is not X2Only, X3Only or X2andX3")
        dids_element = codec.children(details.one("listOfDIDs"), "dId", "dSId")
        if dids_element.all("dSId"):
            raise MessageError(_DEFAULT_CODES["ActivateTask"], "destination sets are not supported")
        dids = tuple(codec.uuid(codec.text_of(d), "dId") for d in dids_element.all("dId"))
        liid = start = end = None
        mediation = details.optional("listOfMediationDetails")
        if mediation is not None:
            entries = codec.children(mediation, "mediationDetails").all("mediationDetails")
            if len(entries) > 1:
                raise MessageError(codec.UNSUPPORTED_COMBINATION, "one LIID per task")
            if entries:
                md = codec.children(entries[0], *_MEDIATION)
                liid = md.text("LIID")
                if not re.fullmatch(_LIID, liid):
                    raise MessageError(codec.SYNTAX, "LIID does not match its pattern")
                if md.optional("StartTime") is not None:
                    start = codec.time_of(md.text("StartTime"), "StartTime")
                if md.optional("EndTime") is not None:
                    end = codec.time_of(md.text("EndTime"), "EndTime")
        return TaskSpec(xid, target, dids, delivery, liid, start, end)

    def _activate(self, caller: Caller, message: RequestMessage, out: Out) -> None:
        self.tasks.activate(caller, self._spec(message))
        out.response.ok("ActivateTask", out.echo)

    def _modify(self, caller: Caller, message: RequestMessage, out: Out) -> None:
        self.tasks.modify(caller, self._spec(message))
        out.response.ok("ModifyTask", out.echo)

    def _xid(self, message: RequestMessage) -> str:
        return codec.uuid(codec.body(message, "xId").text("xId"), "xId")

    def _did(self, message: RequestMessage) -> str:
        return codec.uuid(codec.body(message, "dId").text("dId"), "dId")

    def _deactivate(self, caller: Caller, message: RequestMessage, out: Out) -> None:
        self.tasks.deactivate(caller, self._xid(message))
        out.response.ok("DeactivateTask", out.echo)

    def _deactivate_all(self, caller: Caller, message: RequestMessage, out: Out) -> None:
        codec.body(message)
        self.tasks.deactivate_all(caller)
        out.response.ok("DeactivateAllTasks", out.echo)

    def _task_details(self, caller: Caller, message: RequestMessage, out: Out) -> None:
        warrant = self.tasks.task(self._xid(message))
        element = out.response.message("GetTaskDetailsResponse", out.echo)
        details = codec.sub(element, "taskResponseDetails")
        _task_details(codec.sub(details, "taskDetails"), warrant)
        status = codec.sub(details, "taskStatus")
        codec.sub(status, "provisioningStatus", "complete")
        codec.sub(status, "listOfFaults")

    def _list_all(self, caller: Caller, message: RequestMessage, out: Out) -> None:
        codec.body(message)
        element = out.response.message("ListAllDetailsResponse", out.echo)
        xids = codec.sub(element, "ListOfXIDs")
        for warrant in self.tasks.tasks():
            codec.sub(xids, "xId", warrant.xid)
        dids = codec.sub(element, "ListOfDIDs")
        for destination in self.tasks.destinations():
            codec.sub(dids, "dId", destination.did)

    # --- destinations -----------------------------------------------------------------------

    def _destination(self, message: RequestMessage) -> Destination:
        details = codec.children(
            codec.body(message, "destinationDetails").one("destinationDetails"),
            "dId",
            "friendlyName",
            "deliveryType",
            "deliveryAddress",
            "destinationDetailsExtensions",
        )
        did = codec.uuid(details.text("dId"), "dId")
        name = details.text("friendlyName") if details.optional("friendlyName") is not None else ""
        delivery = details.text("deliveryType")
        if delivery not in _DELIVERY:
            raise MessageError(codec.SYNTAX, "deliveryType is not X2Only, X3Only or X2andX3")
        address = codec.children(
            details.one("deliveryAddress"), "ipAddressAndPort", "e164Number", "uri", "emailAddress"
        )
        if len(address.items) != 1:
            raise MessageError(codec.SYNTAX, "deliveryAddress is a choice of exactly one address")
        if address.optional("uri") is None:
            raise MessageError(
                codec.UNSUPPORTED_ADDRESS, "a DF2 destination is a uri naming its certificate"
            )
        return Destination(did, name, delivery, address.text("uri"))

    def _create_destination(self, caller: Caller, message: RequestMessage, out: Out) -> None:
        self.tasks.create_destination(caller, self._destination(message))
        out.response.ok("CreateDestination", out.echo)

    def _modify_destination(self, caller: Caller, message: RequestMessage, out: Out) -> None:
        self.tasks.modify_destination(caller, self._destination(message))
        out.response.ok("ModifyDestination", out.echo)

    def _remove_destination(self, caller: Caller, message: RequestMessage, out: Out) -> None:
        self.tasks.remove_destination(caller, self._did(message))
        out.response.ok("RemoveDestination", out.echo)

    def _destination_details(self, caller: Caller, message: RequestMessage, out: Out) -> None:
        destination = self.tasks.destination(self._did(message))
        element = out.response.message("GetDestinationDetailsResponse", out.echo)
        details = codec.sub(element, "destinationResponseDetails")
        d = codec.sub(details, "destinationDetails")
        codec.sub(d, "dId", destination.did)
        if destination.friendly_name:
            codec.sub(d, "friendlyName", destination.friendly_name)
        codec.sub(d, "deliveryType", destination.delivery_type)
        codec.sub(codec.sub(d, "deliveryAddress"), "uri", destination.address)
        status = codec.sub(details, "destinationStatus")
        codec.sub(status, "destinationDeliveryStatus", "activeAndWorking")
        codec.sub(status, "listOfFaults")

    def _empty(self, caller: Caller, message: RequestMessage, out: Out) -> None:
        codec.body(message)
        out.response.ok(message.kind, out.echo)


def _task_details(element: etree._Element, warrant: Warrant) -> None:
    codec.sub(element, "xId", warrant.xid)
    identifier = codec.sub(codec.sub(element, "targetIdentifiers"), "targetIdentifier")
    arm = "telUri" if warrant.target.startswith("tel:") else "sipUri"
    codec.sub(identifier, arm, warrant.target)
    codec.sub(element, "deliveryType", warrant.delivery_type or "X2andX3")
    dids = codec.sub(element, "listOfDIDs")
    for did in warrant.dids:
        codec.sub(dids, "dId", did)
    mediation = codec.sub(codec.sub(element, "listOfMediationDetails"), "mediationDetails")
    codec.sub(mediation, "LIID", warrant.liid)
    codec.sub(mediation, "deliveryType", "HI2Only")
    codec.sub(mediation, "StartTime", codec.now_timestamp(warrant.valid_from))
    if warrant.valid_until < OPEN_END:
        codec.sub(mediation, "EndTime", codec.now_timestamp(warrant.valid_until))
