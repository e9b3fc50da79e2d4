"""TESTS ONLY: known key bytes as a new version of a vault key, to compare the token with software.

Such a key came from outside, so the token reports ALWAYS_SENSITIVE and NEVER_EXTRACTABLE false and
the vault's load check (hsm/keycheck.py) refuses it: it is handed to the open vault directly,
bypassing the check, and must be gone before any vault loads the token again (the `imported`
fixture and the tests' finally blocks destroy it). The product has no way to import a key.
"""

from __future__ import annotations

import logging
from typing import Any

from pkcs11 import Attribute, KeyType

from firmware.core.ports import KeyName, KeyState, KeyVersionInfo
from hsm.templates import SPECS
from hsm.vault import PKCS11_LOCK, Pkcs11Vault

log = logging.getLogger(__name__)

# The GENERIC_SECRET length SoftHSM needs for HMAC-SHA-256 (it refuses shorter HMAC keys).
HMAC_KEY_BYTES = 32


def import_template(name: KeyName, version: int, value: bytes) -> dict[Attribute, Any]:
    """The template of `name` version `version`, with known bytes instead of a length."""
    tmpl = SPECS[name].template(version)
    del tmpl[Attribute.VALUE_LEN]
    tmpl[Attribute.VALUE] = value
    return tmpl


def import_known_key(vault: Pkcs11Vault, name: KeyName, value: bytes) -> KeyVersionInfo:
    """Store `value` as the next version of `name` and make the open vault use it.

    HMAC keys shorter than 32 bytes are zero-padded to 32: HMAC (RFC 2104) pads keys to the hash
    block with zeros, so every HMAC, hence the MIKEY PRF of a one-chunk inkey, is unchanged, while
    SoftHSM refuses HMAC keys shorter than the hash.
    """
    if SPECS[name].key_type == KeyType.GENERIC_SECRET:
        if not 1 <= len(value) <= 64:
            raise ValueError("an imported HMAC key must be 1..64 bytes")
        value = value.ljust(HMAC_KEY_BYTES, b"\0")
    elif len(value) not in (16, 24, 32):
        raise ValueError("an imported AES key must be 16, 24 or 32 bytes")
    log.warning("UNSAFE: importing known key bytes as a new %s version (tests only)", name)
    with PKCS11_LOCK:
        conn = vault._conn
        version = conn.next_version(name)
        obj = conn.session.create_object(import_template(name, version, value))
        conn.add(name, version, obj)
    return KeyVersionInfo(name, version, KeyState.ACTIVE)
