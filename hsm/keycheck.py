"""What a key in the token must look like before the node uses it (checked at every key load).

Rules:
- A key object labelled `<name>/v<N>` is used only when every attribute its template
  (hsm/templates.py KeySpec.template) sets reads back exactly so from the token: a private token
  object, SENSITIVE true, the key type and length of its name, CKA_ID equal to its label, exactly
  its usage (each of ENCRYPT, DECRYPT, SIGN, VERIFY, WRAP, UNWRAP, DERIVE as the template says; the
  TPK may SIGN/VERIFY and nothing else), and one of three forms of extractability:
    generated  EXTRACTABLE true only with WRAP_WITH_TRUSTED true (it may leave the token only
               under a key the security officer trusts), LOCAL and ALWAYS_SENSITIVE true: made in
               this token as sensitive, and SoftHSM keeps WRAP_WITH_TRUSTED read-only, so its value
               never left in plaintext;
    sealed     EXTRACTABLE false with NEVER_EXTRACTABLE and ALWAYS_SENSITIVE true (every key made
               before key transport existed; it can never leave);
    imported   as generated but LOCAL false (unwrapped from a transport file, hsm/transport.py),
               and vouched for by this token's security officer: a public CKA_TRUSTED object
               naming the label and the key's check value (hsm/provenance.py). A holder of the
               user PIN can create a key from known bytes that looks exactly like an unwrapped
               one, but cannot create a CKA_TRUSTED object, nor match the check value of a key
               they replaced. SoftHSM reports CKA_VALUE_LEN 0 for an unwrapped key, so its length
               is bound by the check value (and the import's blob length), not by VALUE_LEN.
- So a key imported from known bytes, made extractable then locked, or made plaintext-extractable
  cannot pass as one of ours (whoever planted it may know its value).
- The check is required, not best effort: an attribute the token does not report counts as wrong.
  PKCS#11 lets any holder of the user PIN create objects with our labels, relabel objects and,
  while CKA_MODIFIABLE is true (session copies need it), change usage flags and CKA_ID of our
  own keys; so the check runs on every load (start, refresh, recovery), not only at creation.
- A violation is HsmConfigurationError naming the label and each wrong attribute
  ("key ticket-protection/v2 is not sensitive (CKA_SENSITIVE false)"); it never quotes attribute
  values beyond booleans, key types and lengths, and never a PIN.
- Two token objects with one label are refused where the labels are scanned (hsm/connection.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pkcs11 import Attribute

from firmware.core.errors import HsmConfigurationError
from hsm.templates import SPECS, KeySpec, key_label

# Set by the token, never by a template (PKCS#11 2.40 4.9, secret key objects): LOCAL true only
# for a key generated in the token, ALWAYS_SENSITIVE true only for one sensitive from then on,
# NEVER_EXTRACTABLE true only for one never extractable.
TOKEN_SET: Mapping[Attribute, bool] = {
    Attribute.LOCAL: True,
    Attribute.ALWAYS_SENSITIVE: True,
}
SEALED: Mapping[Attribute, bool] = {
    Attribute.EXTRACTABLE: False,
    Attribute.ALWAYS_SENSITIVE: True,
    Attribute.NEVER_EXTRACTABLE: True,
}
IMPORTED: Mapping[Attribute, bool] = {Attribute.LOCAL: False}

# Does the token's security officer vouch for this (imported) key object? (hsm/provenance.py)
Vouched = Callable[[Any], bool]

# What a wrong boolean says, keyed by (attribute, the value the token reported).
_FLAG_WORDS: Mapping[tuple[Attribute, bool], str] = {
    (Attribute.TOKEN, False): "is not a token object",
    (Attribute.PRIVATE, False): "is not private",
    (Attribute.SENSITIVE, False): "is not sensitive",
    (Attribute.EXTRACTABLE, True): "is extractable",
    (Attribute.WRAP_WITH_TRUSTED, False): "may be wrapped by an untrusted key",
    (Attribute.ALWAYS_SENSITIVE, False): "was not always sensitive",
    (Attribute.NEVER_EXTRACTABLE, False): "was extractable once",
}


def required_attributes(spec: KeySpec, version: int) -> dict[Attribute, Any]:
    """Everything a generated version `version` of `spec` must read back: template + TOKEN_SET."""
    return {**spec.template(version), **TOKEN_SET}


def _form(spec: KeySpec, version: int, got: Mapping[Any, Any]) -> tuple[str, dict[Attribute, Any]]:
    """(form, what it must read back) of a key whose attributes read `got` (module docstring)."""
    template = spec.template(version)
    if got.get(Attribute.EXTRACTABLE) is False:
        del template[Attribute.WRAP_WITH_TRUSTED]  # cannot leave at all: either value is fine
        return "sealed", {**template, **SEALED}
    if got.get(Attribute.LOCAL) is False:
        del template[
            Attribute.VALUE_LEN
        ]  # SoftHSM reads 0 once unwrapped; the check value binds it
        return "imported", {**template, **IMPORTED}
    return "generated", required_attributes(spec, version)


def _describe(attribute: Attribute, wanted: Any, got: Any) -> str:
    name = f"CKA_{attribute.name}"
    if got is None:
        return f"does not report {name}"
    if isinstance(wanted, bool) and isinstance(got, bool):
        words = _FLAG_WORDS.get((attribute, got))
        if words is None:  # a usage flag
            words = f"may {attribute.name}" if got else f"may not {attribute.name}"
        return f"{words} ({name} {str(got).lower()})"
    if attribute is Attribute.KEY_TYPE:
        return f"has key type {got.name}, not {wanted.name} ({name})"
    if attribute is Attribute.VALUE_LEN:
        return f"is {got} bytes long, not {wanted} ({name})"
    if attribute is Attribute.ID:
        return f"has a {name} that does not match its label"
    return f"has the wrong {name}"


def violations(required: Mapping[Attribute, Any], got: Mapping[Any, Any]) -> list[str]:
    """One phrase per attribute of `required` that `got` (as read from the token) breaks."""
    return [
        _describe(attribute, wanted, got.get(attribute))
        for attribute, wanted in required.items()
        if got.get(attribute) != wanted
    ]


READ = (
    *required_attributes(next(iter(SPECS.values())), 1),
    *SEALED,
    Attribute.WRAP_WITH_TRUSTED,
)


def check_key(obj: Any, spec: KeySpec, version: int, vouched: Vouched | None = None) -> None:
    """Raise HsmConfigurationError unless token object `obj` is a key the node may use as
    version `version` of `spec` (one C_GetAttributeValue, and for an imported key the vouch
    check; the caller holds PKCS11_LOCK)."""
    label = key_label(spec.name, version)
    try:
        got = obj.get_attributes(list(dict.fromkeys(READ)))
    except ValueError:  # python-pkcs11 could not decode a value (a vendor-defined key type)
        raise HsmConfigurationError(
            f"key {label} has attributes that cannot be decoded; the node does not use it"
        ) from None
    form, required = _form(spec, version, got)
    problems = violations(required, got)
    if not problems and form == "imported" and (vouched is None or not vouched(obj)):
        problems = ["was not generated in this token and its security officer did not vouch for it"]
    if problems:
        raise HsmConfigurationError(
            f"key {label} "
            + ", ".join(problems)
            + "; the node does not use a key that breaks its template"
        )
