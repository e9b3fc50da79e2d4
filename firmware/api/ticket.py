"""TicketService servicer: one MIKEY message in, the KMS's MIKEY answer out.

Rules (contract kms.proto, TicketService):
- An answer (REQUEST_RESP, RESOLVE_RESP, or a MIKEY Error message for an authenticated request
  that cannot be served) is returned with status OK.
- A request that cannot be parsed or does not authenticate gets no MIKEY message: the status is
  INVALID_ARGUMENT or UNAUTHENTICATED with the ERR number in trailing metadata "mikey-error".
- Every core error goes through the one table in firmware/api/status.py.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from firmware.api import status
from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.api.server import Undecodable
from firmware.core.errors import KmsError, MalformedMessage

log = logging.getLogger("kmsnode.api")


class Exchanger(Protocol):
    def exchange(self, data: bytes, tls_identities: frozenset[str] | None = None) -> bytes: ...


class TicketServicer(kms_pb2_grpc.TicketServiceServicer):
    def __init__(self, core: Exchanger) -> None:
        self.core = core

    def Exchange(self, request: Any, context: Any) -> Any:
        try:
            if isinstance(request, Undecodable):
                raise MalformedMessage(f"the request does not decode ({request.error})")
            answer = self.core.exchange(bytes(request.data))
        except KmsError as exc:
            status.abort(context, exc)
        except Exception:
            log.exception("TicketService.Exchange failed")
            status.internal(context)
        return kms_pb2.MikeyMessage(data=answer)
