"""The one table from core errors to gRPC status codes and ErrorInfo reasons.

Rules:
- Every KmsError subclass resolves to exactly one status code through its MRO (a test proves every
  class defined in firmware.core.errors has an entry of its own); the ErrorInfo reason is the one
  the error carries (`KmsError.reason`), so core and api can never disagree on it.
- The status message is the error's text, which by the errors module's rule holds no secret.
- ErrorInfo carries domain "kms.v1" and the reason from the contract; MIKEY errors add the
  trailing metadata key "mikey-error" with the RFC 3830 / RFC 6043 ERR number.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from firmware.core import errors

DOMAIN = "kms.v1"

TABLE: dict[type[errors.KmsError], grpc.StatusCode] = {
    errors.KmsError: grpc.StatusCode.INTERNAL,
    errors.HsmUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.HsmConfigurationError: grpc.StatusCode.UNAVAILABLE,
    errors.KeyVersionNotFound: grpc.StatusCode.PERMISSION_DENIED,
    errors.KeyVersionUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.WrappedKeyInvalid: grpc.StatusCode.INTERNAL,
    errors.AuditUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.CallerError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.MalformedMessage: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotAuthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.KeyVersionInUse: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Conflict: grpc.StatusCode.ALREADY_EXISTS,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.RoleNotAllowed: grpc.StatusCode.PERMISSION_DENIED,
    errors.NoActiveWarrant: grpc.StatusCode.PERMISSION_DENIED,
    errors.TicketInvalid: grpc.StatusCode.PERMISSION_DENIED,
    errors.TicketExpired: grpc.StatusCode.PERMISSION_DENIED,
    errors.MessageAuthFailed: grpc.StatusCode.PERMISSION_DENIED,
    errors.TargetMismatch: grpc.StatusCode.PERMISSION_DENIED,
    errors.StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.AuditHeadRegression: grpc.StatusCode.UNAVAILABLE,
    errors.SchemaNewerThanCode: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AuditIntegrityError: grpc.StatusCode.UNAVAILABLE,
    errors.TooManyStreams: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.TaskRefused: grpc.StatusCode.FAILED_PRECONDITION,
}


def lookup(error: errors.KmsError) -> tuple[grpc.StatusCode, str]:
    """The status code of `error` (the nearest class in its MRO with an entry) and the reason
    the error carries itself."""
    for cls in type(error).__mro__:
        code = TABLE.get(cls)
        if code is not None:
            return code, error.reason
    raise LookupError(type(error).__name__)  # unreachable: KmsError itself is in the table


def to_status(error: errors.KmsError) -> grpc.Status:
    code, reason = lookup(error)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))
    status = status_pb2.Status(code=code.value[0], message=str(error), details=[info])
    converted: grpc.Status = rpc_status.to_status(status)
    mikey_error = getattr(error, "mikey_error", None)
    if mikey_error is not None:
        converted = _with_mikey_error(converted, mikey_error)
    return converted


class _Status(grpc.Status):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: object) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def _with_mikey_error(status: grpc.Status, mikey_error: int) -> grpc.Status:
    metadata = (*tuple(status.trailing_metadata or ()), ("mikey-error", str(mikey_error)))
    return _Status(status.code, status.details, metadata)


def internal(context: grpc.ServicerContext) -> NoReturn:
    """End the RPC for an error nobody planned for: INTERNAL, no detail (the log has it)."""
    abort(context, errors.KmsError("internal error"))


def abort(context: grpc.ServicerContext, error: errors.KmsError) -> NoReturn:
    """End the RPC with the status of `error`."""
    context.abort_with_status(to_status(error))
    raise AssertionError("abort_with_status returned")  # pragma: no cover
