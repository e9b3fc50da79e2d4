"""MIKEY over HTTPS for UEs (RFC 6043 section 7: "In [3GPP.33.328], it is defined how the Ticket
Request and Ticket Resolve exchanges are carried over HTTP"; TS 33.220 Annex H.3 Ua protocol
id 01 00 00 00 06). TS 33.328's HTTP text was not available, so every choice below is a setting
of [ue_http_listener] (README "MIKEY over HTTPS").

Rules:
- A UE POSTs one MIKEY message (REQUEST_INIT or RESOLVE_INIT) with the configured media type
  (`application/mikey`, RFC 3830 section 10.1; a `version` parameter other than 1 is refused)
  to the configured path; the body is the message itself, or its base64 when so configured.
- The answer is the TicketCore's, unchanged: REQUEST_RESP, RESOLVE_RESP, or the MIKEY Error
  message of an authenticated request that cannot be served, as `200` with the same media
  type. A request that does not parse or does not authenticate gets no MIKEY message: `400`
  with the ERR number in the configured error header. Every refusal names its ErrorInfo reason
  (the same reasons as TicketService) in the reason header. Another media type is `415`; the
  server (firmware/api/https.py) answers 405, 404, 411 and 413 before the body is read.
- Node-side errors (HSM, store, audit unavailable) are `503`; an error nobody planned for is
  `500` without detail (the log has it).
- Metrics are TicketService's: kmsnode_requests{method="Exchange", code=<gRPC status name>} and
  kmsnode_request_seconds{method="Exchange"}, so one dashboard counts both bindings.
- TLS identity binding (TS 33.328 6.2.3.5 with a TLS layer that authenticated the UE): with
  `tls_identity = "client-certificate"` the UE's verified, unrevoked client certificate names
  its public identities as SAN URIs, and IDRi / IDRr must be one of them (the core refuses with
  ERR 7 otherwise, no certificate binding nobody). GBA (TS 33.222) would supply the identities
  the same way.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time

import grpc

from firmware.api import status
from firmware.api.https import Request, Response
from firmware.api.metrics import Metrics
from firmware.api.roles import RoleResolver
from firmware.api.ticket import Exchanger
from firmware.config import UeHttpConfig
from firmware.core.errors import KmsError, MalformedMessage
from firmware.core.identity import IdentityError, canonical

log = logging.getLogger("kmsnode.api")

_CALLER_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}


def media_type_matches(header: str | None, wanted: str) -> bool:
    """`header` names `wanted` (case-insensitive), with no parameter but MIKEY version 1."""
    if header is None:
        return False
    kind, *params = (p.strip() for p in header.split(";"))
    if kind.lower() != wanted.lower():
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() != "version" or value.strip().strip('"') != "1":
            return False
    return True


def certificate_identities(resolver: RoleResolver, der: bytes | None) -> frozenset[str]:
    """The canonical SIP/TEL identities among the SAN URIs of a verified, unrevoked client
    certificate (empty without one)."""
    caller = resolver.caller_of_certificate(der, "")
    if caller.revoked:
        return frozenset()
    found = set()
    for typed in caller.identities:
        if typed.startswith("uri:"):
            try:
                found.add(canonical(typed[4:]))
            except IdentityError:
                continue
    return frozenset(found)


class UeHttpBinding:
    """The [ue_http_listener] handler: HTTP request in, MIKEY answer out."""

    def __init__(
        self,
        core: Exchanger,
        settings: UeHttpConfig,
        metrics: Metrics,
        resolver: RoleResolver,
    ) -> None:
        self.core, self.settings, self.metrics, self.resolver = core, settings, metrics, resolver

    def __call__(self, request: Request) -> Response:
        s = self.settings
        if not media_type_matches(request.header("content-type"), s.content_type):
            return Response(415, (("Accept", s.content_type),))
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            answer = self._exchange(request)
        except KmsError as exc:
            code, _ = status.lookup(exc)
            return self._refused(exc, code)
        except Exception:
            log.exception("MIKEY over HTTPS failed")
            code = grpc.StatusCode.INTERNAL
            return self._refused(KmsError("internal error"), code)
        finally:
            self.metrics.requests.labels("Exchange", code.name).inc()
            self.metrics.latency.labels("Exchange").observe(time.perf_counter() - start)
        if s.body_encoding == "base64":
            answer = base64.b64encode(answer)
        return Response(200, (("Content-Type", s.content_type),), answer)

    def _exchange(self, request: Request) -> bytes:
        data = request.body
        if self.settings.body_encoding == "base64":
            try:
                data = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise MalformedMessage("the body is not base64") from None
        bound = None
        if self.settings.tls_identity == "client-certificate":
            bound = certificate_identities(self.resolver, request.peer_certificate)
        return self.core.exchange(data, bound)

    def _refused(self, error: KmsError, code: grpc.StatusCode) -> Response:
        s = self.settings
        headers = [(s.reason_header, error.reason)]
        mikey_error = getattr(error, "mikey_error", None)
        if mikey_error is not None:
            headers.append((s.error_header, str(mikey_error)))
        if code in _CALLER_CODES:
            http = 400
        elif code is grpc.StatusCode.UNAVAILABLE:
            http = 503
        else:
            http = 500
        return Response(http, tuple(headers))
