"""Release signing with an Ed25519 key held in a PKCS#11 token (CKM_EDDSA), e.g. the release HSM.

Rules: the PIN comes from a file, is held only for the call and never printed; the private key
never leaves the token; the public key is read from the token's public-key object (CKA_EC_POINT,
a DER OCTET STRING of the 32-byte key) so the manifest's key id is the token key's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from image.errors import BadSignature


@dataclass(frozen=True)
class Pkcs11Signer:
    module: str
    token_label: str
    key_label: str
    pin_file: Path

    def _open(self) -> tuple[Any, Any]:
        import pkcs11

        lib = pkcs11.lib(self.module)
        token = lib.get_token(token_label=self.token_label)
        pin = self.pin_file.read_text().strip()
        return pkcs11, token.open(user_pin=pin)

    def public_key(self) -> Ed25519PublicKey:
        pkcs11, session = self._open()
        with session:
            key = session.get_key(pkcs11.ObjectClass.PUBLIC_KEY, label=self.key_label)
            point = bytes(key[pkcs11.Attribute.EC_POINT])
        if len(point) == 34 and point[:2] == b"\x04\x20":
            point = point[2:]
        if len(point) != 32:
            raise BadSignature(f"token key {self.key_label!r} is not an Ed25519 key")
        return Ed25519PublicKey.from_public_bytes(point)

    def sign(self, message: bytes) -> bytes:
        pkcs11, session = self._open()
        with session:
            key = session.get_key(pkcs11.ObjectClass.PRIVATE_KEY, label=self.key_label)
            return bytes(key.sign(message, mechanism=pkcs11.Mechanism.EDDSA))
