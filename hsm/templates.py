"""Explicit PKCS#11 templates for the node's keys, and the mechanisms the node needs.

Rules:
- Never rely on python-pkcs11's or the token's defaults: every attribute that matters is set.
- Every long-term key is a private token object, SENSITIVE true, with exactly one purpose:
    TPK (ticket-protection)  GENERIC_SECRET 256 bits, SIGN/VERIFY only (HMAC-SHA-1 / HMAC-SHA-256)
    KEK (key-encryption)     AES 256 bits, WRAP/UNWRAP only (CKM_AES_KEY_WRAP, RFC 3394)
    audit                    GENERIC_SECRET 256 bits, SIGN/VERIFY only (HMAC-SHA-256)
- A long-term key leaves its token only wrapped under a key the token's security officer marked
  CKA_TRUSTED (key transport between a cluster's HSMs, hsm/transport.py): it is generated
  EXTRACTABLE true only together with WRAP_WITH_TRUSTED true, which the token keeps read-only
  (SoftHSM 2.6: both directions refused, measured in tests/hsm/test_wrap_policy.py). Keys made
  before this rule (EXTRACTABLE false, NEVER_EXTRACTABLE true) stay valid and cannot be moved.
- CKA_MODIFIABLE stays true: SoftHSM refuses C_CopyObject of an unmodifiable object with a changed
  CKA_TOKEN, and session copies are how hot keys are used. SENSITIVE and EXTRACTABLE are one-way.
- Labels (and CKA_ID) are `<name>/v<version>`, version >= 1.
- Transient objects (a PSK being wrapped, or a short PSK being padded) are session objects,
  extractable and not sensitive, with no purpose at all; they live only inside one vault call.
- A PSK the node computes with (hsm/psks.py) is a session object, SENSITIVE and not EXTRACTABLE,
  SIGN only, PSK_HMAC_BYTES long: a shorter PSK is padded with zero bytes, which leaves every
  HMAC unchanged (RFC 2104 pads the key with zeros to the block size, 64 bytes for SHA-1 and
  SHA-256) and meets the token's minimum HMAC key sizes (SoftHSM refuses keys shorter than the
  hash: 20 bytes for SHA-1, 32 for SHA-256).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from firmware.core.ports import KeyName
from firmware.mikey.prf import PrfFunc

# Every usage flag of a secret key; a template sets each one, true or false.
USAGE = (
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.DERIVE,
)


def _only(*allowed: Attribute) -> dict[Attribute, Any]:
    return {a: a in allowed for a in USAGE}


_LONG_TERM: dict[Attribute, Any] = {
    Attribute.CLASS: ObjectClass.SECRET_KEY,
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: True,
    Attribute.WRAP_WITH_TRUSTED: True,
}


@dataclass(frozen=True)
class KeySpec:
    """How one named key is generated and what it may do."""

    name: KeyName
    key_type: KeyType
    bits: int
    gen_mechanism: Mechanism
    purposes: Mapping[Attribute, Any]

    def template(self, version: int) -> dict[Attribute, Any]:
        """The full template of version `version` (a token object)."""
        label = key_label(self.name, version)
        return {
            **_LONG_TERM,
            Attribute.KEY_TYPE: self.key_type,
            Attribute.VALUE_LEN: self.bits // 8,
            Attribute.LABEL: label,
            Attribute.ID: label.encode(),
            **self.purposes,
        }


SPECS: Mapping[KeyName, KeySpec] = {
    KeyName.TICKET_PROTECTION: KeySpec(
        KeyName.TICKET_PROTECTION,
        KeyType.GENERIC_SECRET,
        256,
        Mechanism.GENERIC_SECRET_KEY_GEN,
        _only(Attribute.SIGN, Attribute.VERIFY),
    ),
    KeyName.KEY_ENCRYPTION: KeySpec(
        KeyName.KEY_ENCRYPTION,
        KeyType.AES,
        256,
        Mechanism.AES_KEY_GEN,
        _only(Attribute.WRAP, Attribute.UNWRAP),
    ),
    KeyName.AUDIT: KeySpec(
        KeyName.AUDIT,
        KeyType.GENERIC_SECRET,
        256,
        Mechanism.GENERIC_SECRET_KEY_GEN,
        _only(Attribute.SIGN, Attribute.VERIFY),
    ),
}

HMAC_MECHANISM: Mapping[PrfFunc, Mechanism] = {
    PrfFunc.MIKEY_1: Mechanism.SHA_1_HMAC,
    PrfFunc.PRF_HMAC_SHA_256: Mechanism.SHA256_HMAC,
}
AUDIT_MECHANISM = Mechanism.SHA256_HMAC
WRAP_MECHANISM = Mechanism.AES_KEY_WRAP

# Everything the node needs the token to offer; start is refused when one is missing.
REQUIRED_MECHANISMS: frozenset[Mechanism] = frozenset(
    {
        Mechanism.SHA_1_HMAC,
        Mechanism.SHA256_HMAC,
        Mechanism.AES_KEY_WRAP,
        Mechanism.AES_KEY_GEN,
        Mechanism.GENERIC_SECRET_KEY_GEN,
    }
)

# A PSK while it is being wrapped or right after unwrapping: a session object with no purpose.
TRANSIENT_PSK: dict[Attribute, Any] = {
    Attribute.CLASS: ObjectClass.SECRET_KEY,
    Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
    Attribute.TOKEN: False,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: False,
    Attribute.EXTRACTABLE: True,
    **_only(),
}

# A user PSK held for computing (hsm/psks.py): never readable, HMAC only.
PSK_IN_TOKEN: dict[Attribute, Any] = {
    Attribute.CLASS: ObjectClass.SECRET_KEY,
    Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
    Attribute.TOKEN: False,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    **_only(Attribute.SIGN),
}
PSK_HMAC_BYTES = 32  # SHA-256's output length: SoftHSM's minimum HMAC key size for both PRFs

# The attributes of a session copy of a long-term key (C_CopyObject); the rest is inherited.
SESSION_COPY: dict[Attribute, Any] = {Attribute.TOKEN: False}

_LABEL_RE = re.compile(r"^(?P<name>[a-z-]+)/v(?P<version>[1-9][0-9]{0,8})$")


def key_label(name: KeyName, version: int) -> str:
    if version < 1:
        raise ValueError("key versions start at 1")
    return f"{name.value}/v{version}"


def parse_label(label: str) -> tuple[KeyName, int] | None:
    """(name, version) of one of our labels, or None for any other object."""
    m = _LABEL_RE.match(label)
    if m is None:
        return None
    try:
        name = KeyName(m.group("name"))
    except ValueError:
        return None
    return name, int(m.group("version"))
