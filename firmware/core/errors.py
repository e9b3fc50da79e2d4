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


class AuditUnavailable(KmsError):
    """An audit record could not be written durably; the request is refused (fail closed)."""


class ConfigError(KmsError):
    """The node's configuration is invalid; the message names the setting."""
