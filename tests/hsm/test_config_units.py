"""PKCS#11 URI parsing, PIN sources and the fake vault (no SoftHSM needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware.core.errors import HsmConfigurationError, HsmUnavailable, KeyVersionNotFound
from firmware.core.ports import KeyName, KeyState, WrappedKey
from firmware.mikey.prf import PrfFunc, prf
from hsm.errors import ActiveVersionRefused, PskLengthError, WrappedKeyRejected
from hsm.fake import FakeVault
from hsm.pin import PinKind, PinSource
from hsm.uri import parse_uri
from tests.hsm.psk_check import expected, outputs


def test_uri_selects_the_token_by_label_with_percent_decoding() -> None:
    uri = parse_uri(
        "pkcs11:token=kms%20node;manufacturer=SoftHSM%20project;serial=abc"
        "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/kms/pin"
    )
    assert uri.token == "kms node" and uri.manufacturer == "SoftHSM project"
    assert uri.serial == "abc" and uri.module_path == "/usr/lib/softhsm/libsofthsm2.so"
    assert uri.pin_source == "file:/run/kms/pin"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("pkcs11:token=a?pin-value=s3cr3t", "pin-value"),
        ("pkcs11:token=a;slot-id=1", "slot-id"),
        ("pkcs11:serial=1", "token="),
        ("pkcs12:token=a", "pkcs11:"),
        ("pkcs11:token=a;token=b", "twice"),
        ("pkcs11:token=a;colour=red", "unknown"),
    ],
)
def test_uri_errors_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(HsmConfigurationError, match=needle) as info:
        parse_uri(text)
    assert "s3cr3t" not in str(info.value)


@given(st.text(min_size=12, max_size=40))
def test_uri_never_echoes_a_pin_value(pin: str) -> None:
    from urllib.parse import quote

    with pytest.raises(HsmConfigurationError) as info:
        parse_uri(f"pkcs11:token=t?pin-value={quote(pin)}")
    assert quote(pin) not in str(info.value) and pin not in str(info.value)


def test_pin_file_loses_one_trailing_newline_only(tmp_path: Path) -> None:
    f = tmp_path / "pin"
    f.write_bytes(b" 12 34 \n\n")
    assert PinSource.file(f).read() == " 12 34 \n"
    f.write_bytes(b"1234\r\n")
    assert PinSource.parse(f"file://{f}").read() == "1234"


def test_pin_from_a_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hsm-pin").write_text("4711\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    source = PinSource.parse("credential:hsm-pin")
    assert source.kind is PinKind.CREDENTIAL and source.read() == "4711"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(HsmConfigurationError, match="CREDENTIALS_DIRECTORY"):
        source.read()


def test_unreadable_or_empty_pin_errors_name_the_source_not_the_pin(tmp_path: Path) -> None:
    with pytest.raises(HsmConfigurationError, match="missing"):
        PinSource.file(tmp_path / "missing").read()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(HsmConfigurationError, match="empty"):
        PinSource.file(tmp_path / "empty").read()
    with pytest.raises(HsmConfigurationError):
        PinSource.parse("relative/pin")


# --- FakeVault ------------------------------------------------------------------------------


def test_fake_vault_fails_the_next_call_once() -> None:
    vault = FakeVault()
    vault.fail_next(HsmUnavailable("boom"))
    with pytest.raises(HsmUnavailable, match="boom"):
        vault.random_bytes(8)
    assert len(vault.random_bytes(8)) == 8
    assert vault.calls == ["random_bytes", "random_bytes"]


def test_fake_vault_unavailable_until_restored_and_listeners_hear_it() -> None:
    vault = FakeVault()
    heard: list[bool] = []
    vault.add_listener(lambda available, _r: heard.append(available))
    vault.device_removed()
    with pytest.raises(HsmUnavailable):
        vault.audit_hmac(b"x")
    vault.device_added()
    assert len(vault.audit_hmac(b"x")) == 32 and heard == [False, True]


def test_fake_vault_has_the_real_vaults_version_semantics() -> None:
    vault = FakeVault()
    tpk = KeyName.TICKET_PROTECTION
    vault.create_version(tpk)
    assert [(v.version, v.state) for v in vault.versions(tpk)] == [
        (1, KeyState.DECRYPT_ONLY),
        (2, KeyState.ACTIVE),
    ]
    with pytest.raises(ActiveVersionRefused):
        vault.destroy_version(tpk, 2)
    vault.destroy_version(tpk, 1)
    with pytest.raises(KeyVersionNotFound):
        vault.ticket_prf(1, PrfFunc.MIKEY_1, [(b"x", 16)])


@given(psk=st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)))
def test_fake_vault_psks_compute_the_prf_of_their_bytes(psk: bytes) -> None:
    vault = FakeVault()
    assert outputs(vault, vault.wrap_psk(psk)) == expected(psk)


def test_fake_vault_refuses_bad_psk_lengths_and_tampered_blobs() -> None:
    vault = FakeVault()
    with pytest.raises(PskLengthError):
        vault.wrap_psk(bytes(12))
    w = vault.wrap_psk(bytes(16))
    with pytest.raises(WrappedKeyRejected):
        vault.psk_prf(WrappedKey(w.kek_version, bytes(len(w.blob))), PrfFunc.MIKEY_1, [(b"x", 16)])


def test_fake_vault_prf_is_the_mikey_prf_of_its_key() -> None:
    vault = FakeVault()
    key = bytes(range(32))
    version = vault.import_key(KeyName.TICKET_PROTECTION, key).version
    for func in PrfFunc:
        assert vault.ticket_prf(version, func, [(b"label", 48)]) == [prf(func, key, b"label", 48)]
    assert "00010203" not in repr(vault)
