from __future__ import annotations

import inspect

import grpc

from firmware.api import status
from firmware.core import errors


def _error_classes() -> list[type[errors.KmsError]]:
    return [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.KmsError) and c.__module__ == errors.__name__
    ]


def test_every_error_class_has_its_own_entry() -> None:
    missing = [c.__name__ for c in _error_classes() if c not in status.TABLE]
    assert missing == []


def test_xk_refusals_map_to_the_contract_reasons() -> None:
    expected = {
        errors.MalformedMessage: (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_MESSAGE"),
        errors.TicketInvalid: (grpc.StatusCode.PERMISSION_DENIED, "TICKET_INVALID"),
        errors.TicketExpired: (grpc.StatusCode.PERMISSION_DENIED, "TICKET_EXPIRED"),
        errors.MessageAuthFailed: (grpc.StatusCode.PERMISSION_DENIED, "MESSAGE_AUTH_FAILED"),
        errors.TargetMismatch: (grpc.StatusCode.PERMISSION_DENIED, "TARGET_MISMATCH"),
        errors.NoActiveWarrant: (grpc.StatusCode.PERMISSION_DENIED, "NO_ACTIVE_WARRANT"),
        errors.RoleNotAllowed: (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"),
        errors.HsmUnavailable: (grpc.StatusCode.UNAVAILABLE, "HSM_UNAVAILABLE"),
    }
    for cls, entry in expected.items():
        assert status.lookup(cls("x")) == entry


def test_mikey_errors_carry_the_err_number_in_trailing_metadata() -> None:
    converted = status.to_status(errors.NotAuthenticated("stale", mikey_error=1))
    assert converted.code == grpc.StatusCode.UNAUTHENTICATED
    assert ("mikey-error", "1") in converted.trailing_metadata
    plain = status.to_status(errors.TargetMismatch("no"))
    assert all(k != "mikey-error" for k, _ in plain.trailing_metadata)
