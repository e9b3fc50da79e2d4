"""What SoftHSM 2.6 itself enforces of the key transport policy (probes on the real token).

The node's rule (hsm/templates.py, hsm/transport.py): a node key is EXTRACTABLE only together
with WRAP_WITH_TRUSTED, and only the security officer makes a key CKA_TRUSTED. These tests ask the
token, not python-pkcs11's client-side checks, and fail if the token stops refusing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pkcs11
import pytest
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from firmware.core.ports import KeyName
from hsm.softhsm import SoftHsmToken
from hsm.templates import SPECS, USAGE
from hsm.vault import PKCS11_LOCK

SO_PIN = "test-so-pin-0815"  # tests/conftest.py
TPK = KeyName.TICKET_PROTECTION
KWP = Mechanism.AES_KEY_WRAP_PAD


@pytest.fixture
def token(softhsm_token: SoftHsmToken) -> Any:
    with PKCS11_LOCK:
        return pkcs11.lib(softhsm_token.module_path).get_token(token_label=softhsm_token.label)


@pytest.fixture
def user(token: Any, softhsm_token: SoftHsmToken) -> Iterator[Any]:
    with PKCS11_LOCK:
        session = token.open(rw=True, user_pin=softhsm_token.pin)
    try:
        yield session
    finally:
        with PKCS11_LOCK, contextlib.suppress(p11e.SessionHandleInvalid):
            session.close()  # some tests close it themselves to log in as SO


def _node_key(session: Any, **changes: Any) -> Any:
    """A session object made from the TPK's own template (EXTRACTABLE with WRAP_WITH_TRUSTED)."""
    template = SPECS[TPK].template(1)
    template.update({Attribute.TOKEN: False, Attribute.LABEL: "probe", Attribute.ID: b"probe"})
    template.update({Attribute[a]: v for a, v in changes.items()})
    del template[Attribute.VALUE_LEN]
    return session.generate_key(
        KeyType.GENERIC_SECRET, 256, store=False, mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
        template=template,
    )  # fmt: skip


def _user_kek(session: Any) -> Any:
    return session.generate_key(
        KeyType.AES, 256, store=False,
        template={Attribute.WRAP: True, Attribute.UNWRAP: True, Attribute.SENSITIVE: True},
    )  # fmt: skip


def test_the_token_refuses_to_wrap_a_node_key_under_a_key_the_security_officer_did_not_trust(
    user: Any,
) -> None:
    with PKCS11_LOCK:
        key, kek = _node_key(user), _user_kek(user)
        for mechanism in (Mechanism.AES_KEY_WRAP, KWP):
            with pytest.raises(p11e.KeyNotWrappable):
                kek.wrap_key(key, mechanism=mechanism)
        # the same key without WRAP_WITH_TRUSTED would leave: the attribute is the defence
        plain = _node_key(user, WRAP_WITH_TRUSTED=False)
        assert len(kek.wrap_key(plain, mechanism=KWP)) == 40


def test_the_token_never_reveals_a_node_keys_value(user: Any) -> None:
    with PKCS11_LOCK:
        key = _node_key(user)
        with pytest.raises(p11e.AttributeSensitive):
            key[Attribute.VALUE]


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        (Attribute.WRAP_WITH_TRUSTED, False),
        (Attribute.SENSITIVE, False),
        (Attribute.TRUSTED, True),
    ],
)
def test_the_user_cannot_loosen_a_node_key(user: Any, attribute: Attribute, value: bool) -> None:
    with PKCS11_LOCK:
        key = _node_key(user)
        with pytest.raises(p11e.AttributeReadOnly):
            key[attribute] = value
        with pytest.raises(p11e.AttributeReadOnly):
            key.copy({Attribute.TOKEN: False, attribute: value})


def test_wrap_with_trusted_cannot_be_set_after_generation(user: Any) -> None:
    # Else a key could leave under the user's own KEK first and pass as transportable later.
    with PKCS11_LOCK:
        key = _node_key(user, WRAP_WITH_TRUSTED=False)
        with pytest.raises(p11e.AttributeReadOnly):
            key[Attribute.WRAP_WITH_TRUSTED] = True


def test_a_sealed_key_cannot_leave_even_under_a_trusted_key(token: Any, user: Any) -> None:
    with PKCS11_LOCK:
        sealed = _node_key(user, EXTRACTABLE=False)
        assert sealed[Attribute.NEVER_EXTRACTABLE] is True
        with pytest.raises(p11e.KeyUnextractable):
            _user_kek(user).wrap_key(sealed, mechanism=KWP)


def test_only_the_security_officer_makes_a_key_trusted(token: Any, user: Any) -> None:
    trusted = {
        Attribute.TOKEN: False, Attribute.PRIVATE: False, Attribute.TRUSTED: True,
        **{a: a is Attribute.WRAP for a in USAGE},
    }  # fmt: skip
    with PKCS11_LOCK:
        with pytest.raises(p11e.AttributeReadOnly):
            user.generate_key(KeyType.AES, 256, store=False, template=trusted)
        user.close()
        with token.open(rw=True, so_pin=SO_PIN) as so:
            key = so.generate_key(KeyType.AES, 256, store=False, template=trusted)
            assert key[Attribute.TRUSTED] is True
            # SoftHSM 2.6 takes CKA_TRUSTED only at creation, even from the SO
            plain = so.generate_key(
                KeyType.AES, 256, store=False, template={Attribute.PRIVATE: False}
            )
            with pytest.raises(p11e.AttributeReadOnly):
                plain[Attribute.TRUSTED] = True
            # the SO sees no private object, so it cannot mark a node key trusted
            assert not list(so.get_objects({Attribute.PRIVATE: True}))


def test_a_trusted_key_wraps_a_node_key_and_softhsm_oaep_is_sha1_only(
    token: Any, softhsm_token: SoftHsmToken, user: Any
) -> None:
    with PKCS11_LOCK:
        pub, _priv = user.generate_keypair(KeyType.RSA, 3072, store=False)
        user.close()
        with token.open(rw=True, so_pin=SO_PIN) as so:
            so.generate_key(
                KeyType.AES, 256, store=True, label="probe-trusted",
                template={
                    Attribute.PRIVATE: False, Attribute.TRUSTED: True, Attribute.MODIFIABLE: False,
                    Attribute.EXTRACTABLE: True, Attribute.WRAP_WITH_TRUSTED: True,
                    **{a: a is Attribute.WRAP for a in USAGE},
                },
            )  # fmt: skip
        with token.open(rw=True, user_pin=softhsm_token.pin) as session:
            (trusted,) = session.get_objects({Attribute.LABEL: "probe-trusted"})
            try:
                assert len(trusted.wrap_key(_node_key(session), mechanism=KWP)) == 40
                # unmodifiable: the user cannot give it UNWRAP (CKR_ACTION_PROHIBITED 0x1b)
                with pytest.raises(p11e.PKCS11Error):
                    trusted[Attribute.UNWRAP] = True
                # it is itself WRAP_WITH_TRUSTED: an untrusted RSA key cannot take it out
                pub = session.generate_keypair(KeyType.RSA, 3072, store=False)[0]
                with pytest.raises(p11e.KeyNotWrappable):
                    pub.wrap_key(trusted, mechanism=Mechanism.RSA_PKCS_OAEP)
                extractable = _user_kek(session)
                with pytest.raises(p11e.ArgumentsBad):
                    pub.wrap_key(
                        extractable, mechanism=Mechanism.RSA_PKCS_OAEP,
                        mechanism_param=(Mechanism.SHA256, MGF.SHA256, None),
                    )  # fmt: skip
            finally:
                trusted.destroy()


def test_an_unwrapped_key_reads_local_false_and_value_len_zero(user: Any) -> None:
    # What the load check (hsm/keycheck.py, "imported") can and cannot rely on.
    with PKCS11_LOCK:
        kek = _user_kek(user)
        blob = kek.wrap_key(_node_key(user, WRAP_WITH_TRUSTED=False), mechanism=KWP)
        got = kek.unwrap_key(
            ObjectClass.SECRET_KEY, KeyType.GENERIC_SECRET, blob, mechanism=KWP, store=False,
            template={Attribute.SENSITIVE: True, Attribute.SIGN: True},
        )  # fmt: skip
        assert got[Attribute.LOCAL] is False
        assert got[Attribute.ALWAYS_SENSITIVE] is False
        assert got[Attribute.VALUE_LEN] == 0
