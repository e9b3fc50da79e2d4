"""Self-signed certificates: the Secure Boot db certificate of a release key and the throw-away
CAs of the test image and the tests. One builder, so the two never drift apart.

Rules: SHA-256 signatures; the basic-constraints extension always present and critical, so a db
certificate is never usable as a CA and a CA is limited to signing end-entity certificates.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID


def self_signed(
    key: CertificateIssuerPrivateKeyTypes,
    name: str,
    backdate: datetime.timedelta,
    days: int,
    ca: bool,
) -> x509.Certificate:
    """A certificate for `key` named `name`, valid from now - `backdate` for `days` days."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .sign(key, hashes.SHA256())
    )
