"""A throw-away development PKI for `kmsnode dev-init` and tests (never for production).

Layout (`make_dev_pki(pki)`; CA private keys go to a `dev-ca/` folder beside `pki/`, never into
the node's pki/):
    dev-ca/ue-ca.key, dev-ca/li-ca.key   the two CAs' private keys
    pki/ue-ca.pem     UE CA: issues the UE listener's server certificate and UE client certificates
    pki/li-ca.pem     LI CA: issues the LI listener's server certificate and the DF2 and ADMIN
                      client certificates; the LI listener trusts only this CA for clients, so a
                      UE certificate cannot reach the LI listener at all
    pki/ca.pem        both CA certificates: verifies the node's server certificates
    pki/server.pem/.key      UE listener (SAN URI = the KMS identity, plus loopback names)
    pki/li-server.pem/.key   LI listener (the same names)
    pki/df2, pki/admin, pki/ue (.pem/.key)   client pairs (SAN DNS name and SAN URI)
    pki/x1 (.pem/.key)       the ADMF's X1 client pair (LI CA; SAN DNS name and URI, and the
                             Subject UID RDN = its ADMF identifier, TS 103 221-1 8.2.4)

Rules: ECDSA P-256 keys, written 0600 and never overwritten (idempotent: existing files are
kept); `issue` makes further client certificates for tests (any SAN types, either CA).
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
CAS = ("ue", "li")

_Ca = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


@dataclass(frozen=True)
class DevIdentities:
    """Certificate identities of the dev PKI."""

    kms: str = "sip:kms.ims.example.net"
    df2: str = "df2.li.example.net"
    admin: str = "admin.li.example.net"
    ue: str = "ue.ims.example.net"
    x1: str = "admf.li.example.net"  # also the ADMF identifier (Subject UID)


def ca_dir_for(pki: Path) -> Path:
    """Where the CA private keys of `pki` live: `dev-ca/` beside it."""
    return pki.parent / "dev-ca"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _load_or_make_ca(pki: Path, which: str) -> _Ca:
    cert_path, key_path = pki / f"{which}-ca.pem", ca_dir_for(pki) / f"{which}-ca.key"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"kmsnode dev {which.upper()} CA")])
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
    key_path.unlink(missing_ok=True)
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _issue(
    pki: Path,
    stem: str,
    ca: _Ca,
    names: list[x509.GeneralName],
    server: bool,
    force: bool,
    uid: str | None = None,
) -> Path:
    cert_path, key_path = pki / f"{stem}.pem", pki / f"{stem}.key"
    if cert_path.exists() and key_path.exists() and not force:
        return cert_path
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, f"kmsnode dev {stem}")]
    if uid is not None:
        subject.append(x509.NameAttribute(NameOID.USER_ID, uid))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca[1], hashes.SHA256())
    key_path.unlink(missing_ok=True)
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def _role_names(stem: str, ident: str) -> list[x509.GeneralName]:
    return [x509.DNSName(ident), x509.UniformResourceIdentifier(f"urn:kmsnode:{stem}:{ident}")]


def make_dev_pki(pki: Path, ids: DevIdentities = DevIdentities()) -> None:
    """Create (or complete) the layout of the module docstring for `pki`."""
    pki.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_dir_for(pki).mkdir(parents=True, exist_ok=True, mode=0o700)
    legacy = pki / "ca.key"  # an older layout kept the one CA's key in pki/: move it out
    if legacy.exists():
        legacy.replace(ca_dir_for(pki) / "legacy-ca.key")
    cas = {which: _load_or_make_ca(pki, which) for which in CAS}
    (pki / "ca.pem").write_bytes(
        b"".join(cas[w][0].public_bytes(serialization.Encoding.PEM) for w in CAS)
    )
    server_names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(ids.kms),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    _issue(pki, "server", cas["ue"], server_names, True, False)
    _issue(pki, "li-server", cas["li"], server_names, True, False)
    _issue(pki, "df2", cas["li"], _role_names("df2", ids.df2), False, False)
    _issue(pki, "admin", cas["li"], _role_names("admin", ids.admin), False, False)
    _issue(pki, "ue", cas["ue"], _role_names("ue", ids.ue), False, False)
    _issue(pki, "x1", cas["li"], _role_names("x1", ids.x1), False, False, uid=ids.x1)


def issue(
    pki: Path, stem: str, names: list[x509.GeneralName], ca: str = "li", uid: str | None = None
) -> Path:
    """A further client certificate `pki/<stem>.pem/.key` from CA `ca` ("li" or "ue"), with
    exactly the SANs `names` and optionally a Subject UID (tests: SAN-type mismatches, several
    roles, revocation, X1 identifier binding)."""
    return _issue(pki, stem, _load_or_make_ca(pki, ca), names, False, True, uid)


def ca_key(pki: Path, which: str = "li") -> ec.EllipticCurvePrivateKey:
    """The private key of CA `which` (tests sign CRLs with it)."""
    return _load_or_make_ca(pki, which)[1]
