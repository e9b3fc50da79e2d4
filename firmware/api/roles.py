"""Caller identity and role from the verified TLS client certificate (never from metadata).

Rules:
- The caller's identities are the subject alternative names of its verified client certificate,
  read from the certificate itself (gRPC's auth context `x509_pem_cert`, or the DER certificate
  an HTTPS listener's TLS layer verified), each typed as the SAN
  type it has: `dns:<name>` for a dNSName, `uri:<uri>` for a uniformResourceIdentifier (other SAN
  types give no identity). Without a verified certificate there are none.
- A role is held when one of those typed identities is listed for it in [roles]: a role entry
  names the SAN type it matches (`dns:df2.li.example.net` matches only a DNS SAN of that name,
  never a URI SAN with the same text), and compares exactly.
- Revoked certificates hold no role: [roles] revoked lists certificate serials (`serial:<hex>`)
  and SHA-256 fingerprints (`sha256:<hex>`); [roles] crl names a CRL file (PEM or DER) whose
  signature must verify with the LI client CA. `RoleResolver.reload` swaps the whole policy at
  once (SIGHUP), so every LI call after it is checked against the new one.
- The LI listener serves only TLS 1.3; the listener policy (firmware/api/server.py) refuses
  every RPC on an older protocol.
"""

from __future__ import annotations

import functools
import hashlib
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from firmware.config import RolesConfig
from firmware.core.errors import ConfigError
from firmware.core.ports import Caller, Role


@dataclass(frozen=True)
class CertificateFacts:
    """What the role decision needs to know of a client certificate."""

    identities: tuple[str, ...]  # typed SANs in certificate order
    fingerprint: str  # SHA-256 of the DER certificate, lower-case hex
    serial: int
    issuer: x509.Name
    subject_uids: tuple[str, ...] = ()  # Subject UID RDNs (TS 103 221-1 8.2.4 binds X1 ids)


@functools.lru_cache(maxsize=1024)
def certificate_facts(pem: bytes) -> CertificateFacts | None:
    """Facts of a PEM certificate (memoised: the same certificates call again and again);
    None when it does not parse."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    identities: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    for name in san or ():
        if isinstance(name, x509.DNSName):
            identities.append(f"dns:{name.value}")
        elif isinstance(name, x509.UniformResourceIdentifier):
            identities.append(f"uri:{name.value}")
    der = cert.public_bytes(Encoding.DER)
    uids = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    return CertificateFacts(
        tuple(dict.fromkeys(identities)),
        hashlib.sha256(der).hexdigest(),
        cert.serial_number,
        cert.issuer,
        tuple(str(a.value) for a in uids),
    )


def _load_crl(path: Path, client_ca: bytes | None) -> x509.CertificateRevocationList:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"roles.crl cannot be read: {exc.strerror}") from None
    try:
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_crl(data)
        )
    except ValueError:
        raise ConfigError("roles.crl is not a CRL (PEM or DER)") from None
    issuers = x509.load_pem_x509_certificates(client_ca) if client_ca else []
    for issuer in issuers:
        if issuer.subject == crl.issuer and crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            return crl
    raise ConfigError("roles.crl is not signed by the LI client CA")


@dataclass(frozen=True)
class _Policy:
    members: Mapping[Role, frozenset[str]]
    revoked_serials: frozenset[int]
    revoked_fingerprints: frozenset[str]
    crl: x509.CertificateRevocationList | None

    def revoked(self, facts: CertificateFacts) -> bool:
        if facts.serial in self.revoked_serials or facts.fingerprint in self.revoked_fingerprints:
            return True
        if self.crl is not None and self.crl.issuer == facts.issuer:
            return self.crl.get_revoked_certificate_by_serial_number(facts.serial) is not None
        return False


def _policy(roles: RolesConfig, client_ca: bytes | None) -> _Policy:
    return _Policy(
        {Role(name): frozenset(members) for name, members in roles.members.items()},
        roles.revoked_serials,
        roles.revoked_fingerprints,
        _load_crl(roles.crl, client_ca) if roles.crl is not None else None,
    )


class RoleResolver:
    """Turns a gRPC auth context into a Caller under the current role policy."""

    def __init__(self, roles: RolesConfig, client_ca: bytes | None = None) -> None:
        self._client_ca = client_ca
        self._policy = _policy(roles, client_ca)
        self._lock = threading.Lock()

    def reload(self, roles: RolesConfig) -> None:
        """Swap in a new policy (all of it, or nothing: a bad CRL keeps the old policy)."""
        policy = _policy(roles, self._client_ca)
        with self._lock:
            self._policy = policy

    def caller(self, auth: Mapping[str, Sequence[bytes]]) -> Caller:
        versions = auth.get("ssl_tls_version", ())
        tls = versions[0].decode("ascii", "replace") if versions else ""
        pems = auth.get("x509_pem_cert", ())
        return self._caller(bytes(pems[0]) if pems else None, tls)

    def caller_of_certificate(self, der: bytes | None, tls_version: str) -> Caller:
        """The Caller of a verified DER client certificate (the HTTPS listeners' TLS peer)."""
        pem = ssl.DER_cert_to_PEM_cert(der).encode("ascii") if der else None
        return self._caller(pem, tls_version)

    def _caller(self, pem: bytes | None, tls: str) -> Caller:
        facts = certificate_facts(pem) if pem else None
        if facts is None:
            return Caller(tls_version=tls)
        policy = self._policy
        revoked = policy.revoked(facts)
        holders: tuple[tuple[Role, tuple[str, ...]], ...] = ()
        if not revoked:
            holders = tuple(
                (role, tuple(i for i in facts.identities if i in members))
                for role, members in policy.members.items()
                if members.intersection(facts.identities)
            )
        return Caller(facts.identities, holders, facts.fingerprint, tls, revoked)

    def caller_of(self, context: object) -> Caller:
        """The Caller of a gRPC servicer context."""
        return self.caller(context.auth_context())  # type: ignore[attr-defined]
