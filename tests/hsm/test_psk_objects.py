"""User PSKs held in the token (hsm/psks.py) against a real SoftHSM token: what the object may
do, that it is reused, bounded, forgotten, and goes with the KEK version that wrapped it."""

from __future__ import annotations

from typing import Any

import pytest
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e

from firmware.core.errors import KeyVersionNotFound
from firmware.core.ports import KeyName, WrappedKey
from firmware.mikey.prf import PrfFunc
from hsm.psks import PskObjects
from hsm.vault import PKCS11_LOCK, Pkcs11Vault
from tests.hsm.psk_check import expected, outputs

pytestmark = pytest.mark.softhsm

KEK = KeyName.KEY_ENCRYPTION


def psk_objects_in_token(vault: Pkcs11Vault) -> int:
    """The session objects that are user PSKs: secret keys that may sign and carry no label
    (the session copies of the long-term keys are labelled `<name>/v<version>`)."""
    query = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: False, Attribute.SIGN: True}
    with PKCS11_LOCK:
        found = list(vault._conn.session.get_objects(query))
        return sum(1 for obj in found if not obj[Attribute.LABEL])


def held(vault: Pkcs11Vault, wrapped: WrappedKey) -> Any:
    with PKCS11_LOCK:
        return vault._conn.psks.get(wrapped)


def test_the_psk_object_is_sensitive_unextractable_and_may_only_sign(vault: Pkcs11Vault) -> None:
    for psk in (bytes(range(32)), bytes(range(16))):
        wrapped = vault.wrap_psk(psk)
        assert outputs(vault, wrapped) == expected(psk)
        obj = held(vault, wrapped)
        with PKCS11_LOCK:
            assert obj[Attribute.SENSITIVE] and not obj[Attribute.EXTRACTABLE]
            assert obj[Attribute.PRIVATE] and not obj[Attribute.TOKEN]
            assert obj[Attribute.SIGN]
            for use in (Attribute.VERIFY, Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.WRAP,
                        Attribute.UNWRAP, Attribute.DERIVE):  # fmt: skip
                assert not obj[use], use
            with pytest.raises(p11e.AttributeSensitive):
                obj[Attribute.VALUE]


def test_a_psk_is_unwrapped_once_and_its_object_reused(vault: Pkcs11Vault) -> None:
    wrapped = vault.wrap_psk(bytes(range(32)))
    before = psk_objects_in_token(vault)
    vault.psk_prf(wrapped, PrfFunc.PRF_HMAC_SHA_256, [(b"first", 32)])
    obj = held(vault, wrapped)
    assert outputs(vault, wrapped) == expected(bytes(range(32)))
    assert held(vault, wrapped) is obj
    assert psk_objects_in_token(vault) == before + 1


def test_at_most_the_limit_of_psk_objects_live_in_the_token(vault: Pkcs11Vault) -> None:
    with PKCS11_LOCK:
        vault._conn.psks = PskObjects(limit=2)
    psks = [bytes([i]) * 32 for i in range(1, 5)]
    wrapped = [vault.wrap_psk(p) for p in psks]
    for w, p in zip(wrapped, psks, strict=True):
        assert outputs(vault, w) == expected(p)
        assert psk_objects_in_token(vault) <= 2
    assert held(vault, wrapped[0]) is None and held(vault, wrapped[3]) is not None
    assert outputs(vault, wrapped[0]) == expected(psks[0])  # evicted: unwrapped again
    assert psk_objects_in_token(vault) == 2


def test_forgetting_a_psk_destroys_its_object(vault: Pkcs11Vault) -> None:
    wrapped = vault.wrap_psk(bytes(range(1, 33)))
    assert outputs(vault, wrapped) == expected(bytes(range(1, 33)))
    before = psk_objects_in_token(vault)
    vault.forget_psk(wrapped)
    assert psk_objects_in_token(vault) == before - 1
    assert held(vault, wrapped) is None
    vault.forget_psk(wrapped)  # nothing held: nothing to do, no error


def test_destroying_a_kek_version_destroys_the_psk_objects_it_unwrapped(
    vault: Pkcs11Vault,
) -> None:
    wrapped = vault.wrap_psk(bytes(range(2, 34)))
    assert outputs(vault, wrapped) == expected(bytes(range(2, 34)))
    assert psk_objects_in_token(vault) == 1
    vault.create_version(KEK)
    vault.destroy_version(KEK, wrapped.kek_version)
    assert psk_objects_in_token(vault) == 0
    with pytest.raises(KeyVersionNotFound):
        vault.psk_prf(wrapped, PrfFunc.MIKEY_1, [(b"label", 16)])


def test_a_kek_version_destroyed_by_another_process_refuses_the_psks_held_under_it(
    vault: Pkcs11Vault,
) -> None:
    """Another process (`kmsnode keys destroy`) removed the token object; this vault learns it
    at its next refresh and must not go on computing with the PSK it unwrapped before."""
    wrapped = vault.wrap_psk(bytes(range(3, 35)))
    assert outputs(vault, wrapped) == expected(bytes(range(3, 35)))
    vault.create_version(KEK)
    with PKCS11_LOCK:
        vault._conn.versions_of(KEK)[wrapped.kek_version].token_obj.destroy()
    vault.refresh()
    with pytest.raises(KeyVersionNotFound):
        vault.psk_prf(wrapped, PrfFunc.MIKEY_1, [(b"label", 16)])
    assert held(vault, wrapped) is None and psk_objects_in_token(vault) == 0
