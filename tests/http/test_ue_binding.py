"""UeHttpBinding's answers for errors of the node's side, with a core that fails as told (the
real server's answers to the caller's errors are in test_ue_https.py)."""

from __future__ import annotations

import pytest

from firmware.api.http_ue import UeHttpBinding
from firmware.api.https import Request
from firmware.api.metrics import Metrics
from firmware.api.roles import RoleResolver
from firmware.config import RolesConfig, UeHttpConfig
from firmware.core.errors import AuditUnavailable, HsmUnavailable, StoreUnavailable


class FailingCore:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def exchange(self, data: bytes, tls_identities: frozenset[str] | None = None) -> bytes:
        raise self.error


def _post(error: Exception) -> tuple[int, dict[str, str]]:
    metrics = Metrics()
    binding = UeHttpBinding(
        FailingCore(error), UeHttpConfig(), metrics, RoleResolver(RolesConfig())
    )
    request = Request("POST", "/mikey", (("content-type", "application/mikey"),), b"x", None, "")
    response = binding(request)
    return response.status, dict(response.headers)


@pytest.mark.parametrize("error", [HsmUnavailable("gone"), StoreUnavailable("gone")])
def test_the_node_being_unavailable_is_503_with_its_reason(error: Exception) -> None:
    status, headers = _post(error)
    assert status == 503
    assert headers["KMS-Reason"] in ("HSM_UNAVAILABLE", "STORE_UNAVAILABLE")
    assert "MIKEY-Error" not in headers


def test_an_error_nobody_planned_for_is_500_without_detail() -> None:
    status, headers = _post(RuntimeError("secret detail"))
    assert status == 500 and headers == {"KMS-Reason": "INTERNAL"}


def test_audit_unavailable_is_503() -> None:
    assert _post(AuditUnavailable("disk full"))[0] == 503
