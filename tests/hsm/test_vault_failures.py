"""Pkcs11Vault under failure: token loss and recovery, refused starts, concurrent stress."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from firmware.core.errors import HsmConfigurationError, HsmUnavailable
from firmware.core.ports import KeyName
from firmware.mikey.prf import PrfFunc
from hsm.errors import LoginRefused
from hsm.pin import PinSource
from hsm.softhsm import SoftHsmToken, create_token, write_secret
from hsm.vault import Pkcs11Vault, VaultSettings
from tests.hsm.child import run_child
from tests.hsm.psk_check import expected, outputs

pytestmark = pytest.mark.softhsm

TPK = KeyName.TICKET_PROTECTION
BOUND = 10.0  # seconds: an upper bound for waits, never an expected duration


def _open_in_child(token: SoftHsmToken, uri: str) -> tuple[dict[str, object], str]:
    (result,), everything = run_child(token, "open_vault", uri, token.module_path)
    return result, everything


def test_start_is_refused_naming_the_mechanism_the_token_lacks(tmp_path: Path) -> None:
    token = create_token(
        tmp_path, "no-kw", "user-pin-1", "so-pin-1", mechanisms="-,CKM_AES_KEY_WRAP"
    )
    result, _ = _open_in_child(token, token.uri)
    assert result["ok"] is False
    assert result["type"] == "HsmConfigurationError"
    assert "CKM_AES_KEY_WRAP" in str(result["message"])


def test_start_with_a_wrong_pin_is_refused_without_revealing_either_pin(tmp_path: Path) -> None:
    token = create_token(tmp_path, "pin-test", "right-pin-9273", "so-pin-3841")
    wrong = tmp_path / "wrong.pin"
    write_secret(wrong, "wrong-pin-5517")
    result, everything = _open_in_child(token, f"pkcs11:token=pin-test?pin-source={wrong}")
    assert result["ok"] is False
    assert result["type"] == "LoginRefused"
    assert "PinIncorrect" in str(result["message"]) and str(wrong) in str(result["message"])
    for secret in ("wrong-pin-5517", "right-pin-9273", "so-pin-3841"):
        assert secret not in everything


def test_a_pin_value_in_the_uri_is_refused_before_anything_is_loaded() -> None:
    with pytest.raises(HsmConfigurationError) as info:
        Pkcs11Vault(VaultSettings(token_uri="pkcs11:token=x?pin-value=hunter2", module_path="/x"))
    assert "hunter2" not in str(info.value)


def test_a_token_label_that_does_not_exist_refuses_start(
    vault_settings: VaultSettings, _vault_keys: None
) -> None:
    settings = replace(
        vault_settings, token_uri=vault_settings.token_uri.replace("kms-test", "nope")
    )
    with pytest.raises(HsmConfigurationError, match="no PKCS#11 token matches token='nope'"):
        Pkcs11Vault.open(settings, monitor=False)


def test_login_refused_is_a_configuration_error(
    vault_settings: VaultSettings, _vault_keys: None, tmp_path: Path
) -> None:
    wrong = tmp_path / "pin"
    write_secret(wrong, "not-the-pin")
    settings = replace(vault_settings, pin_source=PinSource.file(wrong))
    with pytest.raises(LoginRefused) as info:
        Pkcs11Vault.open(settings, monitor=False)
    assert isinstance(info.value, HsmConfigurationError)
    assert "not-the-pin" not in str(info.value)


# --- token loss ---------------------------------------------------------------------------------


def _move_away(token: SoftHsmToken) -> Path:
    away = token.tokendir.with_name("tokens.away")
    token.tokendir.rename(away)
    return away


def test_moving_the_token_away_fails_the_next_call_and_moving_it_back_recovers_by_itself(
    vault_settings: VaultSettings, softhsm_token: SoftHsmToken, _vault_keys: None
) -> None:
    # Token keys used directly (no session copies): every key call touches the token files.
    vault = Pkcs11Vault.open(replace(vault_settings, session_copies=False), monitor=False)
    events: list[tuple[bool, str]] = []
    vault.add_listener(lambda available, reason: events.append((available, reason)))
    try:
        version = vault.active_version(TPK)
        tag = vault.ticket_hmac(version, PrfFunc.MIKEY_1, b"before")
        away = _move_away(softhsm_token)
        try:
            with pytest.raises(HsmUnavailable):
                vault.ticket_hmac(version, PrfFunc.MIKEY_1, b"before")
            assert not vault.available()
            with pytest.raises(HsmUnavailable):
                vault.random_bytes(16)  # handles were dropped: fails without the token
            assert vault.probe() is False  # still away: the probe cannot bring it back
        finally:
            away.rename(softhsm_token.tokendir)
        vault.start_monitor()  # the background probe, every probe_interval
        assert vault._monitor.wait_until_available(BOUND)
        assert vault.ticket_hmac(version, PrfFunc.MIKEY_1, b"before") == tag
        assert [a for a, _ in events] == [False, True]
        assert "ObjectHandleInvalid" in events[0][1]
    finally:
        vault.close()


def test_with_session_copies_the_health_probe_notices_the_loss_and_recovers(
    vault_settings: VaultSettings, softhsm_token: SoftHsmToken, _vault_keys: None
) -> None:
    vault = Pkcs11Vault.open(vault_settings, monitor=False)
    try:
        version = vault.active_version(TPK)
        tag = vault.ticket_hmac(version, PrfFunc.PRF_HMAC_SHA_256, b"x")
        held = vault.wrap_psk(bytes(range(32)))
        assert outputs(vault, held) == expected(bytes(range(32)))  # its object is held now
        away = _move_away(softhsm_token)
        try:
            assert vault.probe() is False
            with pytest.raises(HsmUnavailable):
                vault.ticket_hmac(version, PrfFunc.PRF_HMAC_SHA_256, b"x")
        finally:
            away.rename(softhsm_token.tokendir)
        assert vault.probe() is True
        assert vault.ticket_hmac(version, PrfFunc.PRF_HMAC_SHA_256, b"x") == tag
        assert outputs(vault, vault.wrap_psk(bytes(16))) == expected(bytes(16))
        # the object held before the loss went with its session: unwrapped again, not reused
        assert outputs(vault, held) == expected(bytes(range(32)))
    finally:
        vault.close()


def test_device_removed_marks_unavailable_and_device_added_restores(vault: Pkcs11Vault) -> None:
    events: list[bool] = []
    vault.add_listener(lambda available, _reason: events.append(available))
    vault.device_removed("usb 20a0:4230 removed")
    assert not vault.available()
    with pytest.raises(HsmUnavailable, match="usb 20a0:4230 removed"):
        vault.audit_hmac(b"x")
    vault.device_added()
    assert vault.available()
    assert len(vault.audit_hmac(b"x")) == 32
    assert events == [False, True]


# --- stress -------------------------------------------------------------------------------------


def test_eight_threads_of_mixed_calls_finish_without_crash_or_error(vault: Pkcs11Vault) -> None:
    threads_n, calls_n = 8, 2000
    wrapped = vault.wrap_psk(bytes(range(32)))
    tpk = vault.active_version(TPK)
    errors: list[BaseException] = []
    done = [0] * threads_n
    start = threading.Barrier(threads_n)

    def work(i: int) -> None:
        start.wait()
        try:
            for n in range(calls_n):
                op = (n + i) % 8
                if op == 0:
                    assert [
                        len(k) for k in vault.ticket_prf(tpk, PrfFunc.MIKEY_1, [(b"l" * 30, 16)])
                    ] == [16]
                elif op == 1:
                    assert [
                        len(k)
                        for k in vault.ticket_prf(tpk, PrfFunc.PRF_HMAC_SHA_256, [(b"l", 46)])
                    ] == [46]
                elif op == 2:
                    assert len(vault.ticket_hmac(tpk, PrfFunc.MIKEY_1, b"t" * 272)) == 20
                elif op == 3:
                    assert outputs(vault, wrapped) == expected(bytes(range(32)))
                elif op == 4:
                    assert outputs(vault, vault.wrap_psk(bytes(16))) == expected(bytes(16))
                elif op == 5:
                    assert len(vault.random_bytes(32)) == 32
                elif op == 6:
                    assert len(vault.audit_hmac(b"a" * 64)) == 32
                elif i == 0 and n % 400 == 7:
                    vault.create_version(KeyName.AUDIT)  # rotation while others use the key
                else:
                    assert vault.versions(TPK)[-1].version == tpk
                done[i] += 1
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert not any(w.is_alive() for w in workers)
    assert errors == []
    assert done == [calls_n] * threads_n
    assert vault.available()
    for info in vault.versions(KeyName.AUDIT)[1:-1]:
        vault.destroy_version(KeyName.AUDIT, info.version)
