"""The node's one exception hierarchy.

Rules:
- Every error the core raises is a KmsError subclass that carries its own ErrorInfo reason
  (`reason`, the contract's word for it, as h11's errors carry their status hint); the api's one
  table (firmware/api/status.py) maps each class to a gRPC status code (a test proves every class
  is mapped). The core never asks the api what an error means.
- Messages are for operators and callers: they never contain key material, PINs or stack traces.
- Errors are split by whose fault they are: the caller's (bad input, not authenticated, not
  allowed) or the node's (HSM unavailable, audit not writable, misconfiguration).
"""

from __future__ import annotations

from typing import ClassVar

from firmware.mikey.constants import ErrNo


class KmsError(Exception):
    """Base of every error the node raises on purpose."""

    reason: ClassVar[str] = "INTERNAL"


# --- the node's side --------------------------------------------------------------------------


class HsmUnavailable(KmsError):
    """The HSM cannot be reached (device removed, token gone, session lost); retry later."""

    reason = "HSM_UNAVAILABLE"


class HsmConfigurationError(KmsError):
    """The HSM cannot be used as configured: token not found, wrong PIN, mechanism missing.

    Raised at start; the node refuses to start. The message names what is wrong, never the PIN.
    """

    reason = "HSM_UNAVAILABLE"


class KeyVersionNotFound(KmsError):
    """A key version that is not (or no longer) in the token was asked for."""

    reason = "TICKET_INVALID"


class KeyVersionUnavailable(KmsError):
    """A key version the cluster uses (the store records it, not destroyed) is not in this
    node's HSM: a rotation whose version was not yet moved here. The node answers UNAVAILABLE
    and alarms (KEY_VERSION_UNAVAILABLE); another node, or this one once the version is
    imported, serves the request."""

    reason = "KEY_VERSION_UNAVAILABLE"


class WrappedKeyInvalid(KmsError):
    """A stored wrapped key does not unwrap (RFC 3394 integrity check): the state is damaged."""

    reason = "STATE_DAMAGED"


class AuditUnavailable(KmsError):
    """An audit record could not be written durably; the request is refused (fail closed)."""

    reason = "AUDIT_UNAVAILABLE"


class ConfigError(KmsError):
    """The node's configuration is invalid; the message names the setting."""

    reason = "CONFIG_ERROR"


class StoreUnavailable(KmsError):
    """The state store cannot be reached or did not complete the operation; retry later.

    Stores turn every driver error (connection refused, server gone, pool timeout, disk I/O)
    into this, named by failure class and SQLSTATE, never a password, URL or stored value.
    Nothing of a write that raised it was committed, except when the connection was lost during
    COMMIT itself (PostgreSQL cannot tell then): callers treat such a write as failed.
    """

    reason = "STORE_UNAVAILABLE"


class AuditHeadRegression(KmsError):
    """`set_audit_head` would lower the stored audit head, or replace it at the same count with
    another MAC: records the state counted would vanish from the chain (tampering, or a state
    and log that do not belong together)."""

    reason = "AUDIT_UNAVAILABLE"


class SchemaNewerThanCode(KmsError):
    """The state database was migrated by a newer node; this node refuses to use it."""

    reason = "STATE_DAMAGED"


class AuditIntegrityError(KmsError):
    """At start: the audit log is behind its signed head or the store's head, missing while a
    head exists, or its head does not verify. The node does not start until an operator has
    looked and run `kmsnode audit accept-gap`, which records the gap in the log (signed)."""

    reason = "AUDIT_TAMPERED"


# --- the caller's side ------------------------------------------------------------------------


class CallerError(KmsError):
    """The request is at fault; nothing was changed."""

    reason = "INVALID_REQUEST"


class MalformedMessage(CallerError):
    """A MIKEY message cannot be parsed or is not one this node serves.

    `mikey_error` is the RFC 3830 / RFC 6043 ERR number to report (trailing metadata on
    TicketService, never a MIKEY answer).
    """

    reason = "MALFORMED_MESSAGE"

    def __init__(self, message: str, mikey_error: int = ErrNo.UNSPECIFIED) -> None:
        super().__init__(message)
        self.mikey_error = int(mikey_error)


class NotAuthenticated(CallerError):
    """A MIKEY request did not authenticate: unknown user, wrong PSK, stale or replayed T."""

    reason = "AUTHENTICATION_FAILED"

    def __init__(self, message: str, mikey_error: int = ErrNo.AUTH_FAILURE) -> None:
        super().__init__(message)
        self.mikey_error = int(mikey_error)


class InvalidRequest(CallerError):
    """An administrative or Xk request has a missing or invalid field."""

    reason = "INVALID_REQUEST"


class KeyVersionInUse(CallerError):
    """The active version of a key cannot be destroyed."""

    reason = "KEY_VERSION_ACTIVE"


class NotFound(CallerError):
    """The named user or warrant does not exist."""

    reason = "NOT_FOUND"


class Conflict(CallerError):
    """The request would take an identity or PSK id that belongs to another user."""

    reason = "CONFLICT"


class PermissionDenied(CallerError):
    """Xk refusals. Each raises an alarm, writes an audit record and releases nothing."""

    reason = "PERMISSION_DENIED"


class RoleNotAllowed(PermissionDenied):
    """The caller's certificate does not hold the role the RPC needs."""

    reason = "ROLE_NOT_ALLOWED"


class NoActiveWarrant(PermissionDenied):
    """No active warrant for (liid, target) names this DF2."""

    reason = "NO_ACTIVE_WARRANT"


class TicketInvalid(PermissionDenied):
    """Not a ticket of this KMS: wrong type, MAC fails, or unknown key version."""

    reason = "TICKET_INVALID"


class TicketExpired(PermissionDenied):
    """Outside the ticket's validity window."""

    reason = "TICKET_EXPIRED"


class MessageAuthFailed(PermissionDenied):
    """TRANSFER_INIT or TRANSFER_RESP MAC does not verify."""

    reason = "MESSAGE_AUTH_FAILED"


class TargetMismatch(PermissionDenied):
    """The target is not the ticket's party in the named role."""

    reason = "TARGET_MISMATCH"


class TaskRefused(CallerError):
    """An X1 request (ETSI TS 103 221-1) the task rules refuse; `code` is the X1 error code of
    table 46 (e.g. 2010 XID already exists, 2020 XID does not exist, 7010 DID in use)."""

    reason = "TASK_REFUSED"

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class TooManyStreams(CallerError):
    """A listener's or a certificate's cap on open streams (or watchers) is reached."""

    reason = "TOO_MANY_STREAMS"
