"""The key transport file: key versions wrapped for one recipient HSM (hsm/transport.py).

Format (JSON, UTF-8): {"format": FORMAT, "version": 1, "recipient": SHA-256 hex of the recipient
public key (DER SubjectPublicKeyInfo), "oaep_hash": "sha256" | "sha1", "transport_key": base64 of
the RSA-OAEP wrapped AES-256 key, "keys": [{"label", "name", "version", "blob" (base64, AES-KWP
RFC 5649), "check" (hex, hsm/provenance.py)}], "digest": SHA-256 hex of the canonical JSON of
everything else}.

Rules:
- The digest catches a damaged or edited file before the HSM is asked anything; it is not a
  signature. Each blob is authenticated by KWP itself, and each key's check value (recomputed in
  the recipient's HSM after unwrapping) binds the blob to its label.
- A file that is not exactly this format (unknown version, field, hash, a label that is not one of
  ours, a duplicate label) is refused with TransportFileError naming what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from firmware.core.errors import KmsError
from firmware.core.ports import KeyName
from hsm.templates import key_label

FORMAT = "kmsnode-key-transport"
VERSION = 1
OAEP_HASHES = ("sha256", "sha1")


class TransportFileError(KmsError):
    """A key transport file that cannot be used."""


@dataclass(frozen=True)
class WrappedVersion:
    name: KeyName
    version: int
    blob: bytes
    check: bytes

    @property
    def label(self) -> str:
        return key_label(self.name, self.version)


@dataclass(frozen=True)
class Bundle:
    recipient: str
    oaep_hash: str
    transport_key: bytes
    keys: tuple[WrappedVersion, ...]


def _body(bundle: Bundle) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "recipient": bundle.recipient,
        "oaep_hash": bundle.oaep_hash,
        "transport_key": base64.b64encode(bundle.transport_key).decode(),
        "keys": [
            {
                "label": k.label,
                "name": k.name.value,
                "version": k.version,
                "blob": base64.b64encode(k.blob).decode(),
                "check": k.check.hex(),
            }
            for k in bundle.keys
        ],
    }


def _digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def dumps(bundle: Bundle) -> str:
    body = _body(bundle)
    return json.dumps({**body, "digest": _digest(body)}, indent=2) + "\n"


def loads(text: str) -> Bundle:
    """Parse and check a transport file; TransportFileError when it is not usable."""
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise TransportFileError("not a kmsnode key transport file")
        if raw.get("version") != VERSION:
            raise TransportFileError(
                f"unsupported key transport file version {raw.get('version')!r}"
            )
        digest = raw.pop("digest", None)
        if set(raw) != set(_body(Bundle("", "", b"", ()))):
            raise TransportFileError("the key transport file has missing or unknown fields")
        if digest != _digest(raw):
            raise TransportFileError("the key transport file is damaged (digest mismatch)")
        if raw["oaep_hash"] not in OAEP_HASHES:
            raise TransportFileError("the key transport file names an unknown OAEP hash")
        keys = tuple(
            WrappedVersion(
                KeyName(k["name"]),
                int(k["version"]),
                base64.b64decode(k["blob"], validate=True),
                bytes.fromhex(k["check"]),
            )
            for k in raw["keys"]
        )
        for k, entry in zip(keys, raw["keys"], strict=True):
            if entry["label"] != k.label or set(entry) != {
                "label",
                "name",
                "version",
                "blob",
                "check",
            }:
                raise TransportFileError(f"key entry {entry.get('label')!r} is inconsistent")
        if len({k.label for k in keys}) != len(keys) or not keys:
            raise TransportFileError("the key transport file has no keys or a label twice")
        return Bundle(
            str(raw["recipient"]),
            str(raw["oaep_hash"]),
            base64.b64decode(raw["transport_key"], validate=True),
            keys,
        )
    except TransportFileError:
        raise
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        raise TransportFileError(
            f"the key transport file is malformed ({type(exc).__name__})"
        ) from None
