"""Child process: plant a key that breaks its template in a token, then (optionally) open a vault.

Usage: python -m tests.hsm.plant_key <case> <token-uri> <module-path> [--open]
($SOFTHSM2_CONF names the throw-away token's conf). Version 1 of every key is created first through
the vault (the node's own, valid keys), then the case is planted with plain python-pkcs11 under
PKCS11_LOCK, as anyone holding the user PIN could. Prints one JSON line {"planted": label}, and with
--open a second one as tests/hsm/open_vault.py does. Runs in its own process because a planted key
would make every later load of the token refuse (the test session's token must stay clean).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism

from firmware.core.ports import KeyName
from hsm.pin import PinSource
from hsm.templates import SPECS, key_label
from hsm.uri import parse_uri
from hsm.vault import PKCS11_LOCK, Pkcs11Vault, VaultSettings
from tests.hsm import open_vault
from tests.hsm.known_keys import import_template

TPK, KEK, AUDIT = KeyName.TICKET_PROTECTION, KeyName.KEY_ENCRYPTION, KeyName.AUDIT


def _generate(session: Any, name: KeyName, version: int, **changes: Any) -> Any:
    """Version `version` of `name` from its own template with `changes` (Attribute name: value)."""
    spec = SPECS[name]
    template = spec.template(version)
    template.update({Attribute[a]: v for a, v in changes.items()})
    bits = 8 * template.pop(Attribute.VALUE_LEN)
    return session.generate_key(
        template[Attribute.KEY_TYPE],
        bits,
        label=template[Attribute.LABEL],
        id=template[Attribute.ID],
        store=True,
        mechanism=spec.gen_mechanism
        if template[Attribute.KEY_TYPE] == spec.key_type
        else Mechanism.AES_KEY_GEN,
        template=template,
    )


def _existing(session: Any, name: KeyName, version: int) -> Any:
    (obj,) = session.get_objects({Attribute.LABEL: key_label(name, version), Attribute.TOKEN: True})
    return obj


def _locked_later(session: Any) -> None:
    # Generated extractable, then made non-extractable: EXTRACTABLE now false, as asked, but the
    # value may have left the token in between (NEVER_EXTRACTABLE stays false).
    obj = _generate(session, KEK, 2, EXTRACTABLE=True)
    obj[Attribute.EXTRACTABLE] = False


def _sensitive_later(session: Any) -> None:
    obj = _generate(session, AUDIT, 2, SENSITIVE=False)
    obj[Attribute.SENSITIVE] = True


# case: (what it plants, its label)
CASES: dict[str, tuple[Callable[[Any], object], str]] = {
    "nothing": (lambda s: None, ""),
    "extractable": (
        lambda s: _generate(s, TPK, 2, WRAP_WITH_TRUSTED=False),
        "ticket-protection/v2",
    ),
    "not-sensitive": (lambda s: _generate(s, TPK, 2, SENSITIVE=False), "ticket-protection/v2"),
    "duplicate-label": (lambda s: _generate(s, TPK, 1), "ticket-protection/v1"),
    "decrypt-on-tpk": (lambda s: _generate(s, TPK, 2, DECRYPT=True), "ticket-protection/v2"),
    "encrypt-on-kek": (lambda s: _generate(s, KEK, 2, ENCRYPT=True), "key-encryption/v2"),
    "derive-added-to-own-key": (
        lambda s: _existing(s, AUDIT, 1).__setitem__(Attribute.DERIVE, True),
        "audit/v1",
    ),
    "id-of-another-version": (
        lambda s: _generate(s, TPK, 2, ID=key_label(TPK, 1).encode()),
        "ticket-protection/v2",
    ),
    "known-bytes": (
        lambda s: s.create_object(import_template(TPK, 2, bytes(32))),
        "ticket-protection/v2",
    ),
    "extractable-then-locked": (_locked_later, "key-encryption/v2"),
    "sensitive-later": (_sensitive_later, "audit/v2"),
    "public": (lambda s: _generate(s, TPK, 2, PRIVATE=False), "ticket-protection/v2"),
    "aes-as-tpk": (
        lambda s: _generate(s, TPK, 2, KEY_TYPE=KeyType.AES),
        "ticket-protection/v2",
    ),
    "short-kek": (lambda s: _generate(s, KEK, 2, VALUE_LEN=16), "key-encryption/v2"),
}


def main(argv: list[str]) -> int:
    case, uri, module, *rest = argv
    plant, label = CASES[case]
    with Pkcs11Vault.open(VaultSettings(token_uri=uri, module_path=module), monitor=False) as v:
        v.ensure_keys()
    parsed = parse_uri(uri)
    assert parsed.pin_source is not None
    with PKCS11_LOCK:
        token = pkcs11.lib(module).get_token(token_label=parsed.token)
        session = token.open(rw=True, user_pin=PinSource.parse(parsed.pin_source).read())
        try:
            plant(session)
        finally:
            session.close()
    print(json.dumps({"planted": label}), flush=True)
    if rest == ["--open"]:
        return open_vault.main([uri, module])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
