"""The load check of hsm/keycheck.py: what it requires, its wording, and the keys the vault makes.

Planted keys on a real token are in test_planted_keys.py; here the rules are tested on attribute
dicts (attributes no other process can plant: a session object, another class or label) and the
vault's own new versions on the session token.
"""

from __future__ import annotations

from typing import Any

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from firmware.core.errors import HsmConfigurationError
from firmware.core.ports import KeyName
from hsm import keycheck
from hsm.keycheck import check_key, required_attributes, violations
from hsm.templates import SPECS, USAGE, key_label
from hsm.vault import PKCS11_LOCK, Pkcs11Vault

TPK = KeyName.TICKET_PROTECTION
ALLOWED = {
    KeyName.TICKET_PROTECTION: {Attribute.SIGN, Attribute.VERIFY},
    KeyName.KEY_ENCRYPTION: {Attribute.WRAP, Attribute.UNWRAP},
    KeyName.AUDIT: {Attribute.SIGN, Attribute.VERIFY},
}


class _Obj:
    """Answers get_attributes from a dict, as python-pkcs11 does (absent: not reported)."""

    def __init__(self, attrs: dict[Any, Any]) -> None:
        self.attrs = attrs

    def get_attributes(self, keys: list[Any]) -> dict[Any, Any]:
        return {k: self.attrs[k] for k in keys if k in self.attrs}


class _Undecodable:
    def get_attributes(self, keys: list[Any]) -> dict[Any, Any]:
        raise ValueError(0x80000001)  # python-pkcs11 mapping a vendor-defined CKA_KEY_TYPE


def _good(name: KeyName = TPK, version: int = 3) -> dict[Any, Any]:
    return dict(required_attributes(SPECS[name], version))


@pytest.mark.parametrize("name", list(KeyName))
def test_the_check_requires_a_private_sensitive_generated_token_key_of_one_purpose(
    name: KeyName,
) -> None:
    required = required_attributes(SPECS[name], 4)
    assert {a: required[a] for a in keycheck.TOKEN_SET} == {
        Attribute.ALWAYS_SENSITIVE: True,
        Attribute.LOCAL: True,
    }
    assert required[Attribute.WRAP_WITH_TRUSTED] is True
    assert required[Attribute.CLASS] == ObjectClass.SECRET_KEY
    assert required[Attribute.TOKEN] is True
    assert required[Attribute.PRIVATE] is True
    assert required[Attribute.SENSITIVE] is True
    assert required[Attribute.EXTRACTABLE] is True  # only with WRAP_WITH_TRUSTED
    assert required[Attribute.KEY_TYPE] == SPECS[name].key_type
    assert required[Attribute.VALUE_LEN] == 32
    assert required[Attribute.LABEL] == key_label(name, 4)
    assert required[Attribute.ID] == key_label(name, 4).encode()
    assert {a for a in USAGE if required[a] is True} == ALLOWED[name]
    assert all(required[a] is False for a in USAGE if a not in ALLOWED[name])


def test_a_key_as_its_template_says_passes() -> None:
    assert violations(_good(), _good()) == []
    check_key(_Obj(_good()), SPECS[TPK], 3)


@pytest.mark.parametrize(
    ("attribute", "value", "said"),
    [
        (Attribute.TOKEN, False, "is not a token object (CKA_TOKEN false)"),
        (Attribute.CLASS, ObjectClass.DATA, "has the wrong CKA_CLASS"),
        (Attribute.LABEL, "ticket-protection/v9", "has the wrong CKA_LABEL"),
        (Attribute.VERIFY, False, "may not VERIFY (CKA_VERIFY false)"),
        (Attribute.UNWRAP, True, "may UNWRAP (CKA_UNWRAP true)"),
    ],
)
def test_each_attribute_that_differs_from_the_template_is_named(
    attribute: Attribute, value: Any, said: str
) -> None:
    attrs = {**_good(), attribute: value}
    with pytest.raises(HsmConfigurationError) as info:
        check_key(_Obj(attrs), SPECS[TPK], 3)
    assert str(info.value) == (
        f"key ticket-protection/v3 {said}; the node does not use a key that breaks its template"
    )


def test_an_attribute_the_token_does_not_report_counts_as_wrong() -> None:
    attrs = _good()
    del attrs[Attribute.LOCAL]
    assert violations(_good(), attrs) == ["does not report CKA_LOCAL"]


def _refusal(attrs: dict[Any, Any], vouched: bool | None = None) -> str:
    with pytest.raises(HsmConfigurationError) as info:
        check_key(_Obj(attrs), SPECS[TPK], 3, None if vouched is None else lambda _: vouched)
    return str(info.value)


def test_an_extractable_key_without_wrap_with_trusted_is_refused() -> None:
    said = _refusal({**_good(), Attribute.WRAP_WITH_TRUSTED: False})
    assert "may be wrapped by an untrusted key (CKA_WRAP_WITH_TRUSTED false)" in said


def test_a_sealed_key_made_before_key_transport_passes_but_only_if_never_extractable() -> None:
    sealed = {**_good(), Attribute.EXTRACTABLE: False, Attribute.WRAP_WITH_TRUSTED: False,
              Attribute.NEVER_EXTRACTABLE: True}  # fmt: skip
    check_key(_Obj(sealed), SPECS[TPK], 3)
    said = _refusal({**sealed, Attribute.NEVER_EXTRACTABLE: False})
    assert "was extractable once (CKA_NEVER_EXTRACTABLE false)" in said


def test_an_imported_key_is_used_only_when_the_security_officer_vouched_for_it() -> None:
    # SoftHSM reads VALUE_LEN 0 and ALWAYS_SENSITIVE false on an unwrapped key
    imported = {**_good(), Attribute.LOCAL: False, Attribute.ALWAYS_SENSITIVE: False,
                Attribute.VALUE_LEN: 0}  # fmt: skip
    check_key(_Obj(imported), SPECS[TPK], 3, lambda _: True)
    for vouched in (None, False):
        assert "its security officer did not vouch for it" in _refusal(imported, vouched)
    # the vouch never excuses a broken template
    said = _refusal({**imported, Attribute.SENSITIVE: False}, True)
    assert "is not sensitive" in said and "vouch" not in said


def test_attributes_python_pkcs11_cannot_decode_refuse_the_key() -> None:
    with pytest.raises(HsmConfigurationError, match="key audit/v2 has attributes that cannot be"):
        check_key(_Undecodable(), SPECS[KeyName.AUDIT], 2)


# --- the vault's own keys on the session token ------------------------------------------------


@pytest.mark.softhsm
@pytest.mark.parametrize("name", list(KeyName))
def test_a_freshly_created_version_passes_the_load_check(vault: Pkcs11Vault, name: KeyName) -> None:
    version = vault.create_version(name).version
    with PKCS11_LOCK:
        (obj,) = vault._conn.session.get_objects(
            {Attribute.LABEL: key_label(name, version), Attribute.TOKEN: True}
        )
        check_key(obj, SPECS[name], version)
    vault.refresh()  # the same check over every version in the token
    assert vault.active_version(name) == version


@pytest.mark.softhsm
def test_a_created_key_that_fails_the_check_is_destroyed(
    vault: Pkcs11Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SoftHSM honours every template attribute; a token that ignored one is stood in for by a
    # check that requires a key type the template does not generate.
    def stricter(spec: Any, version: int) -> dict[Any, Any]:
        return {**required_attributes(spec, version), Attribute.KEY_TYPE: KeyType.AES}

    monkeypatch.setattr(keycheck, "required_attributes", stricter)
    before = vault.active_version(TPK)
    with pytest.raises(HsmConfigurationError, match=r"has key type GENERIC_SECRET, not AES"):
        vault.create_version(TPK)
    with PKCS11_LOCK:
        label = key_label(TPK, before + 1)
        assert list(vault._conn.session.get_objects({Attribute.LABEL: label})) == []
    assert vault.active_version(TPK) == before
