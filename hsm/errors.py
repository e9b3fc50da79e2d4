"""The one place that maps python-pkcs11 exceptions to the node's errors.

Rules:
- LOSS errors (device removed, token gone, session or handle invalid, general error, unknown return
  values) mean the HSM is no longer usable as we knew it: the vault marks itself unavailable, drops
  every cached handle and raises HsmUnavailable; a probe re-initialises the library later.
- CONFIG errors (wrong or locked PIN, token not found, mechanism refused) are raised as
  HsmConfigurationError: an operator must act; retrying does not help.
- DATA errors (a wrapped blob that does not unwrap) are the caller's input: WrappedKeyRejected.
- Messages name the PKCS#11 condition and what we were doing, never a PIN or key material.
"""

from __future__ import annotations

import enum
import functools

from firmware.core.errors import (
    HsmConfigurationError,
    HsmUnavailable,
    InvalidRequest,
    KeyVersionInUse,
    WrappedKeyInvalid,
)


class Kind(enum.Enum):
    LOSS = "loss"
    CONFIG = "config"
    DATA = "data"
    OTHER = "other"


class WrappedKeyRejected(WrappedKeyInvalid, ValueError):
    """A wrapped PSK did not unwrap (RFC 3394 integrity check failed or bad length)."""


class PskLengthError(InvalidRequest, ValueError):
    """A PSK to wrap is not a multiple of 8 bytes of at least 16 bytes (RFC 3394)."""


class LoginRefused(HsmConfigurationError):
    """The token refused the login (wrong, locked or expired PIN). Never retried automatically:
    a wrong PIN retried by a probe loop would lock the token's user PIN."""


class ActiveVersionRefused(KeyVersionInUse, ValueError):
    """destroy_version was asked to destroy the ACTIVE version of a key."""


@functools.cache
def _tables() -> dict[str, tuple[type[Exception], ...]]:
    # pkcs11 is imported here, not at module level, so FakeVault (which raises the error classes
    # above) works where python-pkcs11 is not installed.
    from pkcs11 import exceptions as p11e

    login: tuple[type[Exception], ...] = (
        p11e.PinIncorrect,
        p11e.PinInvalid,
        p11e.PinLenRange,
        p11e.PinExpired,
        p11e.PinLocked,
        p11e.UserPinNotInitialized,
    )
    return {
        "loss": (
            p11e.DeviceRemoved,
            p11e.DeviceError,
            p11e.DeviceMemory,
            p11e.TokenNotPresent,
            p11e.TokenNotRecognised,
            p11e.SessionHandleInvalid,
            p11e.SessionClosed,
            p11e.GeneralError,
            p11e.FunctionFailed,
            p11e.ObjectHandleInvalid,
            p11e.KeyHandleInvalid,
            p11e.WrappingKeyHandleInvalid,
            p11e.UnwrappingKeyHandleInvalid,
            p11e.UserNotLoggedIn,
            p11e.SlotIDInvalid,
            p11e.NoSuchToken,
        ),
        "config": (
            *login,
            p11e.MultipleTokensReturned,
            p11e.MechanismInvalid,
            p11e.TokenWriteProtected,
        ),
        "data": (
            p11e.WrappedKeyInvalid,
            p11e.WrappedKeyLenRange,
            p11e.EncryptedDataInvalid,
            p11e.EncryptedDataLenRange,
        ),
        # The login itself was refused: a probe must not retry it on its own (a wrong PIN
        # retried every few seconds would lock the token's user PIN).
        "login": login,
    }


def login_refused_types() -> tuple[type[Exception], ...]:
    """PKCS#11 exceptions that mean the login itself was refused (never retried automatically)."""
    return _tables()["login"]


def classify(exc: BaseException) -> Kind:
    """Which kind of failure a python-pkcs11 exception is."""
    from pkcs11.exceptions import PKCS11Error

    tables = _tables()
    if isinstance(exc, tables["config"]):
        return Kind.CONFIG
    if isinstance(exc, tables["data"]):
        return Kind.DATA
    # An exact PKCS11Error is a return value python-pkcs11 has no class for: treat it as loss.
    if isinstance(exc, tables["loss"]) or type(exc) is PKCS11Error:
        return Kind.LOSS
    return Kind.OTHER


def condition(exc: BaseException) -> str:
    """A short name of the PKCS#11 condition (the exception class name); never its arguments."""
    return type(exc).__name__


def to_kms_error(exc: BaseException, doing: str) -> Exception:
    """The error to raise for `exc`, raised while `doing` (a short phrase without secrets)."""
    kind = classify(exc)
    name = condition(exc)
    if kind is Kind.CONFIG:
        return HsmConfigurationError(f"HSM refused {doing}: {name}")
    if kind is Kind.DATA:
        return WrappedKeyRejected(f"{doing} failed: the token rejected the wrapped key ({name})")
    if kind is Kind.LOSS:
        return HsmUnavailable(f"HSM unavailable during {doing}: {name}")
    return HsmUnavailable(f"HSM error during {doing}: {name}")
