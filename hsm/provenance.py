"""Where an imported key came from: check values, and the security officer's vouch for a key.

Rules:
- A key's check value is computed inside the token with the key itself and binds its label:
  HMAC-SHA-256 over CHECK_DOMAIN || label for a SIGN key (TPK, audit); for the KEK (WRAP only)
  SHA-256 of the RFC 3394 wrap of a transient key whose value is SHA-256(CHECK_DOMAIN || label).
  It reveals nothing of the key, and nobody without the key can compute it for a given label, so
  a blob moved to another label, or a key replaced by one of known value, does not match.
- A vouch is a public token object (a secret key of no use at all: every usage false,
  unmodifiable) with CKA_TRUSTED true, labelled VOUCH_PREFIX + label, its CKA_ID the check value.
  Only the security officer can create an object with CKA_TRUSTED true (SoftHSM 2.6 refuses it to
  the user: AttributeReadOnly, tests/hsm/test_wrap_policy.py), so a holder of the user PIN cannot
  vouch for a key they planted. Deleting a vouch only makes the node refuse the key (fail closed).
- Callers hold hsm.lock.PKCS11_LOCK.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from firmware.core.ports import KeyName
from hsm.templates import TRANSIENT_PSK, USAGE, WRAP_MECHANISM

CHECK_DOMAIN = b"kmsnode key check value\x00"
VOUCH_PREFIX = "kmsnode-vouch/"


def check_value(session: Any, obj: Any, name: KeyName, label: str) -> bytes:
    """The check value (32 bytes) of key object `obj`, labelled `label`, of `name`."""
    if name is KeyName.KEY_ENCRYPTION:
        value = hashlib.sha256(CHECK_DOMAIN + label.encode()).digest()
        probe = session.create_object({**TRANSIENT_PSK, Attribute.VALUE: value})
        try:
            return hashlib.sha256(bytes(obj.wrap_key(probe, mechanism=WRAP_MECHANISM))).digest()
        finally:
            probe.destroy()
    return bytes(obj.sign(CHECK_DOMAIN + label.encode(), mechanism=Mechanism.SHA256_HMAC))


def vouch_template(label: str, check: bytes) -> dict[Attribute, Any]:
    """What the security officer generates to vouch for key `label` with check value `check`."""
    return {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.TRUSTED: True,
        Attribute.MODIFIABLE: False,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.LABEL: VOUCH_PREFIX + label,
        Attribute.ID: check,
        **{a: False for a in USAGE},
    }


def vouch(so_session: Any, label: str, check: bytes) -> None:
    """Create the vouch for `label` (in a session logged in as security officer)."""
    template = vouch_template(label, check)
    for old in list(so_session.get_objects({Attribute.LABEL: template[Attribute.LABEL]})):
        if bytes(old[Attribute.ID]) == check:
            return
    so_session.generate_key(
        KeyType.AES, 128, store=True, label=template[Attribute.LABEL], template=template
    )


def is_vouched(session: Any, obj: Any, name: KeyName, label: str) -> bool:
    """Does a CKA_TRUSTED vouch name `label` with the check value of `obj`?"""
    query = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.TOKEN: True,
        Attribute.LABEL: VOUCH_PREFIX + label,
        Attribute.TRUSTED: True,
    }
    ids = {bytes(v[Attribute.ID]) for v in session.get_objects(query) if v[Attribute.TRUSTED]}
    return bool(ids) and check_value(session, obj, name, label) in ids
