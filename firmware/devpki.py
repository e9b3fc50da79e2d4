"""A throw-away development PKI for `kmsnode dev-init` (never for production).

Rules: ECDSA P-256 keys, written 0600 and never overwritten (idempotent: existing files are kept);
the server certificate carries the KMS identity (the IDRkms value) as a SAN URI plus loopback
names; every other certificate carries its role identity as a SAN DNS name and URI.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=825)


@dataclass(frozen=True)
class DevIdentities:
    """Certificate identities of the dev PKI."""

    kms: str = "sip:kms.ims.example.net"
    df2: str = "df2.li.example.net"
    admin: str = "admin.li.example.net"
    ue: str = "ue.ims.example.net"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _load_or_make_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kmsnode dev CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _issue(
    directory: Path,
    stem: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    names: list[x509.GeneralName],
    server: bool,
) -> None:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    if cert_path.exists() and key_path.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"kmsnode dev {stem}")]))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca[1], hashes.SHA256())
    )
    if key_path.exists():
        key_path.unlink()
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_dev_pki(directory: Path, ids: DevIdentities = DevIdentities()) -> None:
    """Create (or complete) ca, server, df2, admin and ue certificates in `directory`."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = _load_or_make_ca(directory)
    loopback = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    _issue(directory, "server", ca, [x509.UniformResourceIdentifier(ids.kms), *loopback], True)
    for stem, ident in (("df2", ids.df2), ("admin", ids.admin), ("ue", ids.ue)):
        names: list[x509.GeneralName] = [
            x509.DNSName(ident),
            x509.UniformResourceIdentifier(f"urn:kmsnode:{stem}:{ident}"),
        ]
        _issue(directory, stem, ca, names, False)
