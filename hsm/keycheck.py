"""What a key in the token must look like before the node uses it (checked at every key load).

Rules:
- A key object labelled `<name>/v<N>` is used only when every attribute its template
  (hsm/templates.py KeySpec.template) sets reads back exactly so from the token: a private token
  object, SENSITIVE true, EXTRACTABLE false, the key type and length of its name, CKA_ID equal to
  its label, and exactly its usage (each of ENCRYPT, DECRYPT, SIGN, VERIFY, WRAP, UNWRAP, DERIVE as
  the template says; the TPK may SIGN/VERIFY and nothing else).
- On top of the template, the token-set ALWAYS_SENSITIVE and NEVER_EXTRACTABLE must be true: only
  a key generated inside the token as sensitive and non-extractable has both, so a key imported
  from known bytes, unwrapped from outside, or made extractable and then locked cannot pass as one
  of ours (whoever planted it may know its value).
- The check is required, not best effort: an attribute the token does not report counts as wrong.
  PKCS#11 lets any holder of the user PIN create objects with our labels, relabel objects and,
  while CKA_MODIFIABLE is true (session copies need it), change usage flags and CKA_ID of our
  own keys; so the check runs on every load (start, refresh, recovery), not only at creation.
- A violation is HsmConfigurationError naming the label and each wrong attribute
  ("key ticket-protection/v2 is extractable (CKA_EXTRACTABLE true)"); it never quotes attribute
  values beyond booleans, key types and lengths, and never a PIN.
- Two token objects with one label are refused where the labels are scanned (hsm/vault.py _scan).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pkcs11 import Attribute

from firmware.core.errors import HsmConfigurationError
from hsm.templates import KeySpec, key_label

# Set by the token, never by a template: true only for a key that was sensitive and
# non-extractable from its generation on (PKCS#11 2.40 4.9, secret key objects).
TOKEN_SET: Mapping[Attribute, bool] = {
    Attribute.ALWAYS_SENSITIVE: True,
    Attribute.NEVER_EXTRACTABLE: True,
}

# What a wrong boolean says, keyed by (attribute, the value the token reported).
_FLAG_WORDS: Mapping[tuple[Attribute, bool], str] = {
    (Attribute.TOKEN, False): "is not a token object",
    (Attribute.PRIVATE, False): "is not private",
    (Attribute.SENSITIVE, False): "is not sensitive",
    (Attribute.EXTRACTABLE, True): "is extractable",
    (Attribute.ALWAYS_SENSITIVE, False): "was not always sensitive",
    (Attribute.NEVER_EXTRACTABLE, False): "was extractable once",
}


def required_attributes(spec: KeySpec, version: int) -> dict[Attribute, Any]:
    """Everything version `version` of `spec` must read back: its template plus TOKEN_SET."""
    return {**spec.template(version), **TOKEN_SET}


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


def check_key(obj: Any, spec: KeySpec, version: int) -> None:
    """Raise HsmConfigurationError unless token object `obj` is a key the node may use as
    version `version` of `spec` (one C_GetAttributeValue; the caller holds PKCS11_LOCK)."""
    label = key_label(spec.name, version)
    required = required_attributes(spec, version)
    try:
        got = obj.get_attributes(list(required))
    except ValueError:  # python-pkcs11 could not decode a value (a vendor-defined key type)
        raise HsmConfigurationError(
            f"key {label} has attributes that cannot be decoded; the node does not use it"
        ) from None
    problems = violations(required, got)
    if problems:
        raise HsmConfigurationError(
            f"key {label} "
            + ", ".join(problems)
            + "; the node does not use a key that breaks its template"
        )
