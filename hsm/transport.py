"""Key transport between a cluster's HSMs (issue 12 item 6): node key versions leave one token
wrapped for another and are unwrapped there, never in plaintext.

Steps (`kmsnode keys transport-key / export-wrapped / import-wrapped`, firmware/cli_keys.py):
1. Recipient: `transport_key` generates RSA-3072 in its token (label TRANSPORT_LABEL): the private
   half sensitive, never extractable, UNWRAP only; the public half is written as PEM.
2. Sender: the security officer's session imports that public key and generates a fresh AES-256
   transfer key, both public token objects with CKA_TRUSTED true (only the SO may set it),
   unmodifiable, WRAP only; the transfer key itself EXTRACTABLE only with WRAP_WITH_TRUSTED. Then
   the user's session wraps the transfer key with RSA-OAEP under the trusted public key and each
   transportable node key version with the transfer key (CKM_AES_KEY_WRAP_PAD, which SoftHSM
   implements as RFC 5649 KWP), computes each key's check value (hsm/provenance.py), and destroys
   both transfer objects (also when anything fails; leftovers of a crashed run are destroyed by
   the next export). So the token itself decides that a node key leaves only to a recipient its
   security officer accepted: node keys are WRAP_WITH_TRUSTED (hsm/templates.py).
3. Recipient: the security officer's session vouches for each label and check value of the file;
   then the user's session unwraps the transfer key with the private half (a session object,
   UNWRAP only) and each key into a token object with the node's template, same label and id,
   checks its length and check value, and loads it through the node's key check.
Rules:
- OAEP uses SHA-256 where the token has it; SoftHSM 2.6 only offers SHA-1 (SHA-256 parameters are
  refused with CKR_ARGUMENTS_BAD), so the sender falls back to SHA-1 and the file says which.
- A key made before key transport (sealed: EXTRACTABLE false) cannot be moved; it is reported and
  skipped, and the export fails if nothing can be moved.
- A version already in the recipient token is skipped when its check value matches, refused when
  it does not. Nothing of a failed import stays in the token but vouches (harmless without a key).
- PINs come from PinSources and are never printed; every PKCS#11 call holds PKCS11_LOCK.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from firmware.core.errors import HsmConfigurationError, KmsError
from firmware.core.ports import KeyName
from hsm.bundle import Bundle, TransportFileError, WrappedVersion
from hsm.connection import Connection
from hsm.keycheck import check_key
from hsm.lock import PKCS11_LOCK
from hsm.pin import PinSource
from hsm.provenance import check_value, is_vouched, vouch
from hsm.templates import SPECS, USAGE, key_label
from hsm.vault import Pkcs11Vault

TRANSPORT_LABEL = "kmsnode-transport"
TRANSFER_PREFIX = "kmsnode-transfer/"
RSA_BITS = 3072
KWP = Mechanism.AES_KEY_WRAP_PAD
OAEP = {"sha256": (Mechanism.SHA256, MGF.SHA256, None), "sha1": (Mechanism.SHA_1, MGF.SHA1, None)}


class KeyTransportError(KmsError):
    """A key transport step that the token or the file refused."""


def _only(*allowed: Attribute) -> dict[Attribute, bool]:
    return {a: a in allowed for a in USAGE}


# Every usage flag a public / private key has (PKCS#11 refuses the others in its templates).
_PUBLIC_WRAP_ONLY = {
    Attribute.ENCRYPT: False,
    Attribute.VERIFY: False,
    Attribute.VERIFY_RECOVER: False,
    Attribute.DERIVE: False,
    Attribute.WRAP: True,
}
_PRIVATE_UNWRAP_ONLY = {
    Attribute.DECRYPT: False,
    Attribute.SIGN: False,
    Attribute.SIGN_RECOVER: False,
    Attribute.DERIVE: False,
    Attribute.UNWRAP: True,
}


def _load_pem(pem: bytes) -> Any:
    try:
        return serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise KeyTransportError("the recipient file is not a PEM public key") from None


def fingerprint(pem: bytes) -> str:
    """SHA-256 hex of the DER SubjectPublicKeyInfo of an RSA public key in PEM."""
    key = _load_pem(pem)
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _pem(n: int, e: int) -> bytes:
    return (
        rsa.RSAPublicNumbers(e, n)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _int(value: Any) -> int:
    return int.from_bytes(bytes(value), "big")


# --- sessions -------------------------------------------------------------------------------


@contextlib.contextmanager
def so_session(vault: Pkcs11Vault, so_pin: PinSource) -> Iterator[Any]:
    """A read-write session of the vault's token logged in as security officer. The vault must
    be closed: PKCS#11 allows one login type per application."""
    conn: Connection = vault._conn
    with PKCS11_LOCK:
        conn.load_library()
        token = conn._find_token()
        pin = so_pin.read()
        try:
            session = token.open(rw=True, so_pin=pin)
        except p11e.PKCS11Error as exc:
            raise KeyTransportError(
                f"the token refused the security officer login ({type(exc).__name__}); "
                f"check the SO PIN in {so_pin.describe()}"
            ) from None
        finally:
            del pin
    try:
        yield session
    finally:
        with PKCS11_LOCK:
            session.close()


def _in_user_session(vault: Pkcs11Vault, doing: str, op: Any, arg: Any) -> Any:
    """`op(connection, arg)` in the started vault's logged-in session (PKCS11_LOCK, error map)."""
    return vault._call(doing, op, arg)


# --- 1. recipient: the transport key pair ----------------------------------------------------


def _transport_objects(session: Any) -> tuple[Any, Any] | None:
    pubs = list(
        session.get_objects(
            {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: TRANSPORT_LABEL}
        )
    )
    privs = list(
        session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: TRANSPORT_LABEL}
        )
    )
    if not pubs and not privs:
        return None
    if len(pubs) != 1 or len(privs) != 1:
        raise HsmConfigurationError(f"the token holds a broken {TRANSPORT_LABEL} key pair")
    priv = privs[0]
    wrong = {a.name for a, want in _TRANSPORT_PRIVATE_CHECK.items() if priv[a] != want}
    if wrong:
        raise HsmConfigurationError(
            f"the {TRANSPORT_LABEL} private key breaks its template ({', '.join(sorted(wrong))})"
        )
    return pubs[0], priv


_TRANSPORT_PRIVATE_CHECK: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.ALWAYS_SENSITIVE: True,
    Attribute.NEVER_EXTRACTABLE: True,
    Attribute.LOCAL: True,
    **_PRIVATE_UNWRAP_ONLY,
}


def _transport_key(conn: Connection, _: None) -> bytes:
    session = conn.require_session()
    found = _transport_objects(session)
    if found is None:
        session.generate_keypair(
            KeyType.RSA,
            RSA_BITS,
            store=True,
            label=TRANSPORT_LABEL,
            id=TRANSPORT_LABEL.encode(),
            public_template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
                **_PUBLIC_WRAP_ONLY,
            },
            private_template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                **_PRIVATE_UNWRAP_ONLY,
            },
        )
        found = _transport_objects(session)
        assert found is not None
    pub, _priv = found
    return _pem(_int(pub[Attribute.MODULUS]), _int(pub[Attribute.PUBLIC_EXPONENT]))


def transport_key(vault: Pkcs11Vault) -> bytes:
    """The PEM public half of this token's transport key pair (generated on first use)."""
    pem: bytes = _in_user_session(vault, "making the transport key", _transport_key, None)
    return pem


# --- 2. sender -------------------------------------------------------------------------------


def _destroy_transfer_objects(session: Any) -> None:
    for obj in list(session.get_objects({Attribute.TOKEN: True})):
        if str(obj[Attribute.LABEL]).startswith(TRANSFER_PREFIX):
            obj.destroy()


def prepare_export(vault: Pkcs11Vault, so_pin: PinSource, recipient_pem: bytes) -> None:
    """SO step of an export: the recipient's public key and a fresh transfer key, both trusted."""
    public = _load_pem(recipient_pem)
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size < RSA_BITS:
        raise KeyTransportError(f"the recipient key must be RSA of at least {RSA_BITS} bits")
    numbers = public.public_numbers()
    with so_session(vault, so_pin) as so, PKCS11_LOCK:
        _destroy_transfer_objects(so)
        so.create_object(
            {
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.KEY_TYPE: KeyType.RSA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
                Attribute.TRUSTED: True,
                Attribute.MODIFIABLE: False,
                Attribute.LABEL: TRANSFER_PREFIX + "recipient",
                Attribute.MODULUS: numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"),
                Attribute.PUBLIC_EXPONENT: numbers.e.to_bytes(
                    (numbers.e.bit_length() + 7) // 8, "big"
                ),
                **_PUBLIC_WRAP_ONLY,
            }
        )
        so.generate_key(
            KeyType.AES,
            256,
            store=True,
            label=TRANSFER_PREFIX + "key",
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
                Attribute.TRUSTED: True,
                Attribute.MODIFIABLE: False,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: True,
                Attribute.WRAP_WITH_TRUSTED: True,
                **_only(Attribute.WRAP),
            },
        )


@dataclass(frozen=True)
class Exported:
    bundle: Bundle
    skipped: tuple[str, ...]  # sealed versions (made before key transport), not movable


def _export(conn: Connection, args: tuple[str, frozenset[str] | None]) -> Exported:
    recipient, only = args
    session = conn.require_session()
    try:
        (peer,) = session.get_objects({Attribute.LABEL: TRANSFER_PREFIX + "recipient"})
        (transfer,) = session.get_objects({Attribute.LABEL: TRANSFER_PREFIX + "key"})
    except ValueError:
        raise KeyTransportError("the security officer step of the export did not run") from None
    try:
        oaep_hash, wrapped_transfer = "", b""
        for oaep_hash in ("sha256", "sha1"):
            try:
                wrapped_transfer = bytes(
                    peer.wrap_key(
                        transfer, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=OAEP[oaep_hash]
                    )
                )
                break
            except (p11e.ArgumentsBad, p11e.MechanismParamInvalid):
                continue  # SoftHSM 2.6: OAEP with SHA-1 only
        if not wrapped_transfer:
            raise KeyTransportError("the token cannot wrap with RSA-OAEP")
        keys: list[WrappedVersion] = []
        skipped: list[str] = []
        for name in KeyName:
            for version, loaded in sorted(conn.versions_of(name).items()):
                obj = loaded.token_obj
                label = key_label(name, version)
                if only is not None and label not in only:
                    continue
                if not obj[Attribute.EXTRACTABLE]:
                    skipped.append(label)
                    continue
                blob = bytes(transfer.wrap_key(obj, mechanism=KWP))
                keys.append(
                    WrappedVersion(name, version, blob, check_value(session, obj, name, label))
                )
        if only is not None and (missing := only - {k.label for k in keys} - set(skipped)):
            raise KeyTransportError(f"not in this token: {', '.join(sorted(missing))}")
        if not keys:
            raise KeyTransportError(
                "no key version in this token can be moved (all were made before key transport:"
                " rotate, then export the new versions)"
            )
        return Exported(Bundle(recipient, oaep_hash, wrapped_transfer, tuple(keys)), tuple(skipped))
    finally:
        _destroy_transfer_objects(session)


def export_wrapped(
    vault: Pkcs11Vault, recipient_pem: bytes, only: frozenset[str] | None = None
) -> Exported:
    """User step of an export (after prepare_export): every movable key version (or those
    labelled in `only`), wrapped."""
    args = (fingerprint(recipient_pem), only)
    result: Exported = _in_user_session(vault, "exporting key versions", _export, args)
    return result


# --- 3. recipient ----------------------------------------------------------------------------


def vouch_for(vault: Pkcs11Vault, so_pin: PinSource, bundle: Bundle) -> None:
    """SO step of an import: vouch for every label and check value of the file."""
    with so_session(vault, so_pin) as so, PKCS11_LOCK:
        for k in bundle.keys:
            vouch(so, k.label, k.check)


def _unwrap_one(conn: Connection, transfer: Any, k: WrappedVersion) -> None:
    spec = SPECS[k.name]
    if len(k.blob) != spec.bits // 8 + 8:
        raise TransportFileError(f"the blob of {k.label} has the wrong length")
    template = spec.template(k.version)
    del template[Attribute.VALUE_LEN]  # SoftHSM refuses it in an unwrap template
    session = conn.session
    try:
        obj = transfer.unwrap_key(
            ObjectClass.SECRET_KEY,
            spec.key_type,
            k.blob,
            mechanism=KWP,
            store=True,
            template=template,
        )
    except p11e.GeneralError:
        raise TransportFileError(f"the blob of {k.label} fails its KWP integrity check") from None
    try:
        if check_value(session, obj, k.name, k.label) != k.check:
            raise TransportFileError(f"{k.label} does not match its check value")
        check_key(obj, spec, k.version, lambda o: is_vouched(session, o, k.name, k.label))
    except BaseException:
        obj.destroy()
        raise
    conn.add(k.name, k.version, obj)


def _import(conn: Connection, bundle: Bundle) -> list[tuple[str, str]]:
    session = conn.require_session()
    found = _transport_objects(session)
    if found is None:
        raise KeyTransportError("this token has no transport key (kmsnode keys transport-key)")
    pub, priv = found
    mine = fingerprint(_pem(_int(pub[Attribute.MODULUS]), _int(pub[Attribute.PUBLIC_EXPONENT])))
    if bundle.recipient != mine:
        raise TransportFileError("the file was made for another HSM's transport key")
    try:
        transfer = priv.unwrap_key(
            ObjectClass.SECRET_KEY,
            KeyType.AES,
            bundle.transport_key,
            mechanism=Mechanism.RSA_PKCS_OAEP,
            mechanism_param=OAEP[bundle.oaep_hash],
            store=False,
            template={
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                **_only(Attribute.UNWRAP),
            },
        )
    except (
        p11e.GeneralError,
        p11e.EncryptedDataInvalid,
        p11e.WrappedKeyInvalid,
        p11e.ArgumentsBad,
    ):
        raise TransportFileError("this HSM cannot unwrap the file's transfer key") from None
    done: list[tuple[str, str]] = []
    try:
        for k in bundle.keys:
            present = conn.versions_of(k.name).get(k.version)
            if present is not None:
                if check_value(session, present.token_obj, k.name, k.label) != k.check:
                    raise TransportFileError(f"{k.label} is in this token with another value")
                done.append((k.label, "already present"))
                continue
            _unwrap_one(conn, transfer, k)
            done.append((k.label, "imported"))
    finally:
        transfer.destroy()
    return done


def import_wrapped(vault: Pkcs11Vault, bundle: Bundle) -> list[tuple[str, str]]:
    """User step of an import (after vouch_for): (label, what happened) per key of the file."""
    result: list[tuple[str, str]] = _in_user_session(
        vault, "importing key versions", _import, bundle
    )
    return result
