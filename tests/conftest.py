"""Shared fixtures: a throw-away SoftHSM token per test session and vaults on it.

Rules:
- SOFTHSM2_CONF is set once, by `softhsm_token`, before anything loads libsofthsm2 (the library
  reads it at C_Initialize and is loaded once per process). Tests that need another conf (missing
  mechanism, wrong PIN) run in a subprocess with `token.env()`.
- One Pkcs11Vault at a time per process: `vault` is function-scoped and closed after each test.
- Every PKCS#11 call a test makes itself must hold hsm.vault.PKCS11_LOCK.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsm.fake import FakeVault
from hsm.softhsm import SoftHsmToken, create_token
from hsm.vault import Pkcs11Vault, VaultSettings

TEST_LABEL = "kms-test"


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmToken:
    """A fresh token `kms-test` (paths, label, PIN file, module); SOFTHSM2_CONF points at it."""
    directory: Path = tmp_path_factory.mktemp("softhsm")
    token = create_token(directory, TEST_LABEL, pin="test-user-pin-4711", so_pin="test-so-pin-0815")
    os.environ["SOFTHSM2_CONF"] = str(token.conf)
    return token


@pytest.fixture(scope="session")
def vault_settings(softhsm_token: SoftHsmToken) -> VaultSettings:
    """VaultSettings for the session token (short probe interval for recovery tests)."""
    return VaultSettings(
        token_uri=softhsm_token.uri, module_path=softhsm_token.module_path, probe_interval=0.05
    )


@pytest.fixture(scope="session")
def _vault_keys(vault_settings: VaultSettings) -> None:
    with Pkcs11Vault.open(vault_settings, monitor=False) as v:
        v.ensure_keys()


@pytest.fixture
def vault(vault_settings: VaultSettings, _vault_keys: None) -> Iterator[Pkcs11Vault]:
    """A started Pkcs11Vault (no monitor thread) with v1 of every key; closed afterwards."""
    v = Pkcs11Vault.open(vault_settings, monitor=False)
    try:
        yield v
    finally:
        v.close()


@pytest.fixture
def fake_vault() -> FakeVault:
    """An in-memory KeyVault with v1 of every key; `fail_next(exc)` makes the next call fail."""
    return FakeVault()
