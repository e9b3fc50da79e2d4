"""The node's one exception hierarchy.

Rules:
- Every error the core raises is a KmsError subclass; firmware/api/status.py maps each class to one
  gRPC status code and one ErrorInfo reason (a test proves every class is mapped).
- Messages are for operators and callers: they never contain key material, PINs or stack traces.
- Errors are split by whose fault they are: the caller's (bad input, not authenticated, not
  allowed) or the node's (HSM unavailable, audit not writable, misconfiguration).
"""

from __future__ import annotations


class KmsError(Exception):
    """Base of every error the node raises on purpose."""


# --- the node's side --------------------------------------------------------------------------


class HsmUnavailable(KmsError):
    """The HSM cannot be reached (device removed, token gone, session lost); retry later."""


class HsmConfigurationError(KmsError):
    """The HSM cannot be used as configured: token not found, wrong PIN, mechanism missing.

    Raised at start; the node refuses to start. The message names what is wrong, never the PIN.
    """


class KeyVersionNotFound(KmsError):
    """A key version that is not (or no longer) in the token was asked for."""


class WrappedKeyInvalid(KmsError):
    """A stored wrapped key does not unwrap (RFC 3394 integrity check): the state is damaged."""


class AuditUnavailable(KmsError):
    """An audit record could not be written durably; the request is refused (fail closed)."""


class ConfigError(KmsError):
    """The node's configuration is invalid; the message names the setting."""


# --- the caller's side ------------------------------------------------------------------------


class CallerError(KmsError):
    """The request is at fault; nothing was changed."""


class MalformedMessage(CallerError):
    """A MIKEY message cannot be parsed or is not one this node serves.

    `mikey_error` is the RFC 3830 / RFC 6043 ERR number to report (trailing metadata on
    TicketService, never a MIKEY answer).
    """

    def __init__(self, message: str, mikey_error: int = 12) -> None:
        super().__init__(message)
        self.mikey_error = mikey_error


class NotAuthenticated(CallerError):
    """A MIKEY request did not authenticate: unknown user, wrong PSK, stale or replayed T."""

    def __init__(self, message: str, mikey_error: int = 0) -> None:
        super().__init__(message)
        self.mikey_error = mikey_error


class InvalidRequest(CallerError):
    """An administrative or Xk request has a missing or invalid field."""


class KeyVersionInUse(CallerError):
    """The active version of a key cannot be destroyed."""


class NotFound(CallerError):
    """The named user or warrant does not exist."""


class Conflict(CallerError):
    """The request would take an identity or PSK id that belongs to another user."""


class PermissionDenied(CallerError):
    """Xk refusals. Each raises an alarm, writes an audit record and releases nothing."""


class RoleNotAllowed(PermissionDenied):
    """The caller's certificate does not hold the role the RPC needs."""


class NoActiveWarrant(PermissionDenied):
    """No active warrant for (liid, target) names this DF2."""


class TicketInvalid(PermissionDenied):
    """Not a ticket of this KMS: wrong type, MAC fails, or unknown key version."""


class TicketExpired(PermissionDenied):
    """Outside the ticket's validity window."""


class MessageAuthFailed(PermissionDenied):
    """TRANSFER_INIT or TRANSFER_RESP MAC does not verify."""


class TargetMismatch(PermissionDenied):
    """The target is not the ticket's party in the named role."""
