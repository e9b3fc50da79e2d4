"""The release's Secure Boot db key: signs systemd-boot and every UKI (sbsign, in the tools tree).

Rules: RSA-2048 with a self-signed X.509 certificate (what UEFI db entries and sbsign expect); the
private key file is written 0600 and never printed; the certificate is what the operator enrols
in the machine's db (the tests enrol it into OVMF's variable store with virt-fw-vars).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from image.certs import self_signed
from image.errors import BuildError


@dataclass(frozen=True)
class SecureBootKey:
    key: Path
    cert: Path

    def check(self) -> None:
        for p in (self.key, self.cert):
            if not p.is_file():
                raise BuildError(f"Secure Boot key file {p} not found")


def generate(
    key_path: Path, cert_path: Path, name: str = "kmsnode release db key"
) -> SecureBootKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed(key, name, datetime.timedelta(days=1), 3650, ca=False)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return SecureBootKey(key_path, cert_path)
