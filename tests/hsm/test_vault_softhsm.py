"""Pkcs11Vault against a real SoftHSM token: key templates, PRF, wrap/unwrap, versions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11e

from firmware.core.errors import HsmUnavailable, KeyVersionNotFound
from firmware.core.ports import KeyName, KeyState, WrappedKey
from firmware.mikey.prf import PrfFunc, prf
from hsm.direct import DirectCallFailed
from hsm.errors import ActiveVersionRefused, PskLengthError, WrappedKeyRejected
from hsm.softhsm import SoftHsmToken
from hsm.templates import TRANSIENT_PSK, WRAP_MECHANISM
from hsm.vault import PKCS11_LOCK, Pkcs11Vault
from tests.hsm import raw
from tests.hsm.known_keys import import_known_key
from tests.hsm.psk_check import expected, outputs

pytestmark = pytest.mark.softhsm

TPK, KEK, AUDIT = KeyName.TICKET_PROTECTION, KeyName.KEY_ENCRYPTION, KeyName.AUDIT


def _handles(vault: Pkcs11Vault, name: KeyName) -> list[object]:
    """Token object and session copy of the active version (white-box, for attribute checks)."""
    key = vault._conn.versions_of(name)[vault.active_version(name)]
    return [key.token_obj, key.use]


@pytest.fixture
def imported(vault: Pkcs11Vault) -> Iterator[Pkcs11Vault]:
    """The vault, restored afterwards: imported test TPKs are replaced by a fresh random one."""
    before = vault.active_version(TPK)
    yield vault
    if vault.active_version(TPK) != before:
        vault.create_version(TPK)
        for info in vault.versions(TPK):
            if info.version > before and info.state is KeyState.DECRYPT_ONLY:
                vault.destroy_version(TPK, info.version)


# --- key templates, checked by the token's answers -------------------------------------------


@pytest.mark.parametrize("name", list(KeyName))
def test_reading_the_value_of_any_created_key_is_refused_by_the_token(
    vault: Pkcs11Vault, name: KeyName
) -> None:
    with PKCS11_LOCK:
        for obj in _handles(vault, name):
            with pytest.raises(p11e.AttributeSensitive):
                obj[Attribute.VALUE]  # type: ignore[index]


@pytest.mark.parametrize("name", list(KeyName))
def test_created_keys_are_sensitive_and_leave_only_under_a_trusted_key(
    vault: Pkcs11Vault, name: KeyName
) -> None:
    with PKCS11_LOCK:
        for obj in _handles(vault, name):
            attrs = obj.get_attributes(  # type: ignore[attr-defined]
                [
                    Attribute.SENSITIVE,
                    Attribute.EXTRACTABLE,
                    Attribute.WRAP_WITH_TRUSTED,
                    Attribute.ALWAYS_SENSITIVE,
                    Attribute.PRIVATE,
                ]
            )
            assert attrs == {
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: True,
                Attribute.WRAP_WITH_TRUSTED: True,
                Attribute.ALWAYS_SENSITIVE: True,
                Attribute.PRIVATE: True,
            }


def test_the_token_refuses_to_sign_or_encrypt_with_the_kek(
    vault: Pkcs11Vault, softhsm_token: SoftHsmToken
) -> None:
    r = raw.Raw(softhsm_token.module_path)
    with PKCS11_LOCK:
        session = vault._conn.session.handle
        for kek in _handles(vault, KEK):
            handle = kek.handle  # type: ignore[attr-defined]
            # CMAC and ECB fit an AES key: only CKA_SIGN / CKA_ENCRYPT false can refuse them.
            assert r.sign_init(session, handle, raw.CKM_AES_CMAC) == (
                raw.CKR_KEY_FUNCTION_NOT_PERMITTED
            )
            assert r.encrypt_init(session, handle, raw.CKM_AES_ECB) == (
                raw.CKR_KEY_FUNCTION_NOT_PERMITTED
            )
            assert r.sign_init(session, handle, raw.CKM_SHA256_HMAC) != raw.CKR_OK


@pytest.mark.parametrize("name", [TPK, AUDIT])
def test_the_token_refuses_to_wrap_with_hmac_keys(
    vault: Pkcs11Vault, softhsm_token: SoftHsmToken, name: KeyName
) -> None:
    r = raw.Raw(softhsm_token.module_path)
    with PKCS11_LOCK:
        session = vault._conn.session
        victim = session.create_object({**TRANSIENT_PSK, Attribute.VALUE: bytes(range(16))})
        try:
            for key in _handles(vault, name):
                assert key[Attribute.WRAP] is False  # type: ignore[index]
                rv = r.wrap(session.handle, key.handle, victim.handle, raw.CKM_AES_KEY_WRAP)  # type: ignore[attr-defined]
                assert rv in (
                    raw.CKR_KEY_FUNCTION_NOT_PERMITTED,
                    raw.CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
                )
                assert r.encrypt_init(session.handle, key.handle, raw.CKM_AES_ECB) != raw.CKR_OK  # type: ignore[attr-defined]
        finally:
            victim.destroy()


def test_the_kek_cannot_be_read_by_wrapping_it_with_itself(vault: Pkcs11Vault) -> None:
    with PKCS11_LOCK:
        token_kek, copy = _handles(vault, KEK)
        # KeyNotWrappable: WRAP_WITH_TRUSTED, and no key of the node is CKA_TRUSTED
        # (KeyUnextractable for a sealed KEK made before key transport)
        with pytest.raises((p11e.KeyNotWrappable, p11e.KeyUnextractable)):
            copy.wrap_key(token_kek)  # type: ignore[attr-defined]


# --- the MIKEY PRF in the token --------------------------------------------------------------

R16 = bytes(range(0xA0, 0xB0))
T16 = bytes(range(0xB0, 0xC0))
V5 = bytes.fromhex("31931c0a29b702c19bfce90192cb23a3")
# spec/mikey-ticket.md 10.3 (self-computed regression vectors) and 10.1 (minisip capture).
VECTORS = [
    ("V1", PrfFunc.MIKEY_1, bytes(range(16)),
     bytes.fromhex("2d22ac75ff0102030401") + b"\x10" + R16 + b"\x00", 20,
     "be43108b7e2d47851fc506890975b109c690754b"),
    ("V2", PrfFunc.MIKEY_1, bytes(range(16)),
     bytes.fromhex("150533e1ff0102030402") + b"\x10" + R16 + b"\x00", 16,
     "043071a8e70d55b2e9c49c850e63ce28"),
    ("V3", PrfFunc.MIKEY_1, bytes(range(0x10, 0x20)),
     bytes.fromhex("150533e1ffffffffff05") + b"\x10" + T16, 16,
     "eca1be14e376571df688f596ac533336"),
    ("V4", PrfFunc.MIKEY_1, bytes(range(0x20, 0x30)),
     bytes.fromhex("220e99a2ffffffffff06") + b"\x10" + T16, 16,
     "63e16bdc5c0c37e78ad9ba9e58936ca2"),
    ("V5", PrfFunc.MIKEY_1, bytes(range(0x20, 0x30)),
     bytes.fromhex("1f4d675bffffffffff06") + b"\x10" + T16, 16, V5.hex()),
    ("V6", PrfFunc.MIKEY_1, V5,
     bytes.fromhex("2b288856ffffffffff000013") + b"sip:bob@example.com" + b"\x10"
     + bytes(range(0xC0, 0xD0)), 16,
     "3810b8351ac33990930fcffdf7535990"),
    ("V7", PrfFunc.MIKEY_1, bytes(range(0x30, 0x40)),
     bytes.fromhex("2ad01c6401ffffffff03") + b"\x10" + R16 + b"\x00", 16,
     "3c9e9be00dfd2e19e3a38aa7d78d1d0e"),
    ("V8", PrfFunc.PRF_HMAC_SHA_256, bytes(range(0x40, 0x60)),
     bytes.fromhex("2d22ac75ff0102030401") + b"\x10" + R16 + b"\x00", 32,
     "6ab5d34dc290713f2a290500d75c762e5f797e53de3ae4965cf942107287d5e7"),
    ("10.1 encr", PrfFunc.MIKEY_1, b"secret",
     bytes.fromhex("150533e1ff8aa5717a6813b3758c1cfe138d8b2ba886d3f449"), 16,
     "efe2afe8f187e4eabf7fbb1bff6e3a47"),
    ("10.1 auth", PrfFunc.MIKEY_1, b"secret",
     bytes.fromhex("2d22ac75ff8aa5717a6813b3758c1cfe138d8b2ba886d3f449"), 20,
     "cd4d1c3f2f72d4fb017229e17a5dfdd662ccae82"),
    ("10.1 salt", PrfFunc.MIKEY_1, b"secret",
     bytes.fromhex("29b88916ff8aa5717a6813b3758c1cfe138d8b2ba886d3f449"), 14,
     "2d14a97509a4a7058283cecf4f5b"),
]  # fmt: skip


@pytest.mark.parametrize(("_id", "func", "key", "label", "out_len", "expected"), VECTORS)
def test_prf_in_the_token_matches_the_spec_vectors_and_software(
    imported: Pkcs11Vault,
    _id: str,
    func: PrfFunc,
    key: bytes,
    label: bytes,
    out_len: int,
    expected: str,
) -> None:
    version = import_known_key(imported, TPK, key).version
    (in_token,) = imported.ticket_prf(version, func, [(label, out_len)])
    assert in_token == prf(func, key, label, out_len)
    assert in_token.hex() == expected


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.binary(min_size=1, max_size=32),
    label=st.binary(max_size=80),
    out_len=st.integers(min_value=1, max_value=100),
    func=st.sampled_from(list(PrfFunc)),
)
def test_prf_in_the_token_equals_software_prf_on_the_same_key_bytes(
    imported: Pkcs11Vault, key: bytes, label: bytes, out_len: int, func: PrfFunc
) -> None:
    version = import_known_key(imported, TPK, key).version
    assert imported.ticket_prf(version, func, [(label, out_len)]) == [
        prf(func, key, label, out_len)
    ]
    assert imported.ticket_hmac(version, func, label) == prf_hmac(func, key, label)


def prf_hmac(func: PrfFunc, key: bytes, data: bytes) -> bytes:
    import hmac

    return hmac.digest(key, data, func.hash_name)


def test_ticket_prf_of_an_unknown_tpk_version_is_key_version_not_found(vault: Pkcs11Vault) -> None:
    with pytest.raises(KeyVersionNotFound):
        vault.ticket_prf(999, PrfFunc.MIKEY_1, [(b"label", 16)])


# --- PSK wrap, and the PRF on a wrapped PSK --------------------------------------------------


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    psk=st.integers(min_value=2, max_value=4).flatmap(
        lambda n: st.binary(min_size=8 * n, max_size=8 * n)
    )
)
def test_a_wrapped_psk_computes_the_mikey_prf_of_its_bytes(vault: Pkcs11Vault, psk: bytes) -> None:
    wrapped = vault.wrap_psk(psk)
    assert wrapped.kek_version == vault.active_version(KEK)
    assert len(wrapped.blob) == len(psk) + 8 and wrapped.key_length == len(psk)
    assert outputs(vault, wrapped) == expected(psk)  # 16 and 24 bytes: padded in the token


def test_a_short_psk_read_to_be_padded_is_not_left_in_the_direct_call_buffer(
    vault: Pkcs11Vault,
) -> None:
    psk = bytes(range(100, 116))
    wrapped = vault.wrap_psk(psk)
    direct = vault._conn.direct
    assert direct is not None
    with PKCS11_LOCK:  # the read the vault makes of a short PSK before padding it
        conn = vault._conn
        kek = conn.use(KEK, wrapped.kek_version)
        value = direct.unwrap_value(
            conn.session.handle, kek.handle, WRAP_MECHANISM, wrapped.blob, TRANSIENT_PSK
        )
        assert value == psk
        assert psk not in direct._out.raw


def test_wrap_is_rfc3394_key_wrap_under_the_kek(imported: Pkcs11Vault) -> None:
    from cryptography.hazmat.primitives.keywrap import aes_key_wrap

    kek = bytes(range(32))
    version = import_known_key(imported, KEK, kek).version
    try:
        for psk in (bytes(range(16, 48)), bytes(range(16, 32))):
            wrapped = imported.wrap_psk(psk)
            assert wrapped == WrappedKey(version, aes_key_wrap(kek, psk))
            assert outputs(imported, wrapped) == expected(psk)
        # Neither wrap nor the first PRF leaves a transient (readable) object behind.
        with PKCS11_LOCK:
            leftovers = list(
                imported._conn.session.get_objects(
                    {
                        Attribute.CLASS: ObjectClass.SECRET_KEY,
                        Attribute.TOKEN: False,
                        Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                        Attribute.SENSITIVE: False,  # a transient PSK (templates.TRANSIENT_PSK)
                    }
                )
            )
        assert leftovers == []
    finally:
        imported.create_version(KEK)
        imported.destroy_version(KEK, version)


@pytest.mark.parametrize("length", [0, 8, 15, 17, 33, 40])
def test_wrap_refuses_psk_lengths_rfc3394_cannot_wrap_or_the_prf_cannot_use(
    vault: Pkcs11Vault, length: int
) -> None:
    with pytest.raises(PskLengthError):
        vault.wrap_psk(bytes(length))


@pytest.mark.parametrize("psk", [bytes(range(16)), bytes(range(32))])
def test_a_tampered_wrapped_psk_is_rejected(vault: Pkcs11Vault, psk: bytes) -> None:
    wrapped = vault.wrap_psk(psk)
    bad = WrappedKey(wrapped.kek_version, bytes([wrapped.blob[0] ^ 1]) + wrapped.blob[1:])
    with pytest.raises(WrappedKeyRejected):
        vault.psk_prf(bad, PrfFunc.PRF_HMAC_SHA_256, [(b"label", 32)])
    assert vault.available()  # bad input is not HSM loss


@pytest.mark.parametrize("length", [16, 48])
def test_a_wrapped_psk_of_a_length_no_wrap_makes_is_rejected(
    vault: Pkcs11Vault, length: int
) -> None:
    with pytest.raises(WrappedKeyRejected):
        vault.psk_prf(WrappedKey(1, bytes(length)), PrfFunc.MIKEY_1, [(b"label", 16)])


def test_a_wrapped_key_longer_than_one_prf_chunk_is_rejected(imported: Pkcs11Vault) -> None:
    """A 40-byte key wrapped under our KEK unwraps, but the MIKEY PRF of a key longer than 256
    bits XORs two chains (RFC 3830 4.1.2) that one HSM object cannot run: refused, not a wrong
    key."""
    from cryptography.hazmat.primitives.keywrap import aes_key_wrap

    kek = bytes(range(64, 96))
    version = import_known_key(imported, KEK, kek).version
    try:
        wrapped = WrappedKey(version, aes_key_wrap(kek, bytes(range(40))))
        with pytest.raises(WrappedKeyRejected):
            imported.psk_prf(wrapped, PrfFunc.PRF_HMAC_SHA_256, [(b"label", 32)])
    finally:
        imported.create_version(KEK)
        imported.destroy_version(KEK, version)


def test_a_psk_under_a_destroyed_kek_version_is_key_version_not_found(vault: Pkcs11Vault) -> None:
    wrapped = vault.wrap_psk(bytes(range(32)))
    vault.create_version(KEK)
    vault.destroy_version(KEK, wrapped.kek_version)
    with pytest.raises(KeyVersionNotFound):
        vault.psk_prf(wrapped, PrfFunc.MIKEY_1, [(b"label", 16)])


# --- versions ---------------------------------------------------------------------------------


def test_rotation_makes_the_new_version_active_and_the_old_decrypt_only(vault: Pkcs11Vault) -> None:
    old = vault.active_version(TPK)
    tag = vault.ticket_hmac(old, PrfFunc.PRF_HMAC_SHA_256, b"ticket")
    new = vault.create_version(TPK)
    assert new.version == old + 1 and new.state is KeyState.ACTIVE
    states = {v.version: v.state for v in vault.versions(TPK)}
    assert states[old] is KeyState.DECRYPT_ONLY and states[new.version] is KeyState.ACTIVE
    assert vault.ticket_hmac(old, PrfFunc.PRF_HMAC_SHA_256, b"ticket") == tag
    assert vault.ticket_hmac(new.version, PrfFunc.PRF_HMAC_SHA_256, b"ticket") != tag
    with pytest.raises(ActiveVersionRefused):
        vault.destroy_version(TPK, new.version)
    vault.destroy_version(TPK, old)
    assert old not in {v.version for v in vault.versions(TPK)}
    with pytest.raises(KeyVersionNotFound):
        vault.ticket_hmac(old, PrfFunc.PRF_HMAC_SHA_256, b"ticket")
    with pytest.raises(KeyVersionNotFound):
        vault.destroy_version(TPK, old)


def test_versions_survive_a_restart_of_the_vault(
    vault: Pkcs11Vault, vault_settings: object
) -> None:
    before = {n: vault.versions(n) for n in KeyName}
    tag = vault.audit_hmac(b"chain")
    vault.close()
    again = Pkcs11Vault.open(vault_settings, monitor=False)  # type: ignore[arg-type]
    try:
        assert {n: again.versions(n) for n in KeyName} == before
        assert again.audit_hmac(b"chain") == tag
    finally:
        again.close()


def test_random_bytes_come_from_the_token(vault: Pkcs11Vault) -> None:
    a, b = vault.random_bytes(32), vault.random_bytes(32)
    assert len(a) == 32 and a != b
    assert vault.random_bytes(0) == b""


def test_random_bytes_take_the_direct_call_and_fall_back_to_python_pkcs11(
    vault: Pkcs11Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C_GenerateRandom goes through hsm/direct.py (the GIL held under PKCS11_LOCK); a failed
    direct call is repeated through python-pkcs11."""
    direct = vault._conn.direct
    assert direct is not None
    asked: list[int] = []
    real = direct.random

    def spy(session: int, n: int) -> bytes:
        asked.append(n)
        return real(session, n)

    monkeypatch.setattr(direct, "random", spy)
    a, b = vault.random_bytes(24), vault.random_bytes(24)
    assert asked == [24, 24] and len(a) == 24 and a != b

    def failing(session: int, n: int) -> bytes:
        raise DirectCallFailed("C_GenerateRandom", 0x30)

    monkeypatch.setattr(direct, "random", failing)
    c, d = vault.random_bytes(24), vault.random_bytes(24)
    assert len(c) == 24 and c != d and c not in (a, b)


def test_the_vault_reports_its_token_availability_key_states_and_mechanisms(
    vault: Pkcs11Vault,
) -> None:
    assert vault._conn.uri.token == "kms-test" and vault.available() is True
    assert vault.reason == "available"
    assert vault.versions(TPK)[-1].state is KeyState.ACTIVE
    assert "CKM_AES_KEY_WRAP" in vault.mechanisms


def test_a_closed_vault_raises_hsm_unavailable(vault: Pkcs11Vault) -> None:
    vault.close()
    with pytest.raises(HsmUnavailable):
        vault.random_bytes(16)
