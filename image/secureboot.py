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

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

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
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return SecureBootKey(key_path, cert_path)
