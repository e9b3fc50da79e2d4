"""Signed image manifest: canonical JSON, Ed25519 signature, strict parsing. No I/O but key files.

Rules and invariants:
- Canonical form: UTF-8 JSON, keys sorted, no insignificant whitespace, integers and strings only
  (no floats), no duplicate keys. `parse_manifest` refuses bytes that are not canonical, so the
  signed bytes and the parsed meaning cannot differ.
- The signature covers `DOMAIN || manifest bytes` (domain separation: a manifest signature can
  never be replayed as another kind of signed object) and is checked over the bytes received,
  never over a re-encoding.
- The signature envelope names the key id (sha256 of the raw public key); a different key id is
  reported as `WrongKey` before any cryptography is attempted.
- The private key is never in a repr, log or error message.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from image.errors import BadManifest, BadSignature, WrongKey

FORMAT = 1
DOMAIN = b"kmsnode-image-manifest-v1\n"
SIG_ALG = "ed25519"


@dataclass(frozen=True)
class Artifact:
    size: int
    sha256: str


@dataclass(frozen=True)
class VerityInfo:
    root_hash: str
    salt: str
    uuid: str
    data_blocks: int
    data_block_size: int = 4096
    hash_block_size: int = 4096
    hash_alg: str = "sha256"
    format: int = 1


@dataclass(frozen=True)
class BuildInfo:
    commit: str
    source_date_epoch: int
    suite: str
    builder: str


@dataclass(frozen=True)
class Manifest:
    product: str
    version: str
    security_version: int
    build: BuildInfo
    artifacts: Mapping[str, Artifact]
    verity: VerityInfo
    packages: Mapping[str, str]
    format: int = FORMAT

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "product": self.product,
            "version": self.version,
            "security_version": self.security_version,
            "build": vars(self.build).copy(),
            "artifacts": {k: vars(a).copy() for k, a in self.artifacts.items()},
            "verity": vars(self.verity).copy(),
            "packages": dict(self.packages),
        }

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_json_obj())


def canonical_json(obj: Any) -> bytes:
    _check_types(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _check_types(obj: Any) -> None:
    if isinstance(obj, float):
        raise BadManifest("floats are not allowed in a manifest")
    if obj is None or isinstance(obj, bool | str | int):
        return
    if isinstance(obj, list):
        for item in obj:
            _check_types(item)
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise BadManifest("manifest keys must be strings")
            _check_types(v)
        return
    raise BadManifest(f"unsupported value type {type(obj).__name__} in manifest")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise BadManifest(f"duplicate key {k!r} in manifest")
        out[k] = v
    return out


def _reject_float(text: str) -> Any:
    raise BadManifest("floats are not allowed in a manifest")


def _req(obj: Mapping[str, Any], key: str, typ: type, where: str) -> Any:
    if key not in obj:
        raise BadManifest(f"manifest {where} lacks {key!r}")
    value = obj[key]
    if typ is int and isinstance(value, bool):
        raise BadManifest(f"manifest {where}.{key} must be an integer")
    if not isinstance(value, typ):
        raise BadManifest(f"manifest {where}.{key} must be {typ.__name__}")
    return value


def _exact_keys(obj: Mapping[str, Any], keys: set[str], where: str) -> None:
    extra = set(obj) - keys
    if extra:
        raise BadManifest(f"manifest {where} has unknown keys {sorted(extra)}")


def parse_manifest(data: bytes) -> Manifest:
    """Parse canonical manifest bytes; anything else raises BadManifest."""
    try:
        obj = json.loads(
            data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_float=_reject_float
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadManifest(f"manifest is not JSON: {exc.__class__.__name__}") from None
    if not isinstance(obj, dict):
        raise BadManifest("manifest is not a JSON object")
    if canonical_json(obj) != data:
        raise BadManifest("manifest is not in canonical form")
    fmt = _req(obj, "format", int, "")
    if fmt != FORMAT:
        raise BadManifest(f"unknown manifest format {fmt}")
    _exact_keys(
        obj,
        {
            "format",
            "product",
            "version",
            "security_version",
            "build",
            "artifacts",
            "verity",
            "packages",
        },
        "",
    )
    b = _req(obj, "build", dict, "")
    _exact_keys(b, {"commit", "source_date_epoch", "suite", "builder"}, "build")
    build = BuildInfo(
        commit=_req(b, "commit", str, "build"),
        source_date_epoch=_req(b, "source_date_epoch", int, "build"),
        suite=_req(b, "suite", str, "build"),
        builder=_req(b, "builder", str, "build"),
    )
    arts: dict[str, Artifact] = {}
    for name, a in _req(obj, "artifacts", dict, "").items():
        if not isinstance(a, dict):
            raise BadManifest(f"manifest artifact {name!r} is not an object")
        _exact_keys(a, {"size", "sha256"}, f"artifacts.{name}")
        size = _req(a, "size", int, f"artifacts.{name}")
        digest = _req(a, "sha256", str, f"artifacts.{name}")
        if size < 0 or len(digest) != 64 or digest.strip("0123456789abcdef"):
            raise BadManifest(f"manifest artifact {name!r} has a bad size or sha256")
        arts[name] = Artifact(size, digest)
    v = _req(obj, "verity", dict, "")
    _exact_keys(v, {f for f in VerityInfo.__dataclass_fields__}, "verity")
    verity = VerityInfo(
        root_hash=_req(v, "root_hash", str, "verity"),
        salt=_req(v, "salt", str, "verity"),
        uuid=_req(v, "uuid", str, "verity"),
        data_blocks=_req(v, "data_blocks", int, "verity"),
        data_block_size=_req(v, "data_block_size", int, "verity"),
        hash_block_size=_req(v, "hash_block_size", int, "verity"),
        hash_alg=_req(v, "hash_alg", str, "verity"),
        format=_req(v, "format", int, "verity"),
    )
    packages = _req(obj, "packages", dict, "")
    if not all(isinstance(x, str) for x in packages.values()):
        raise BadManifest("manifest packages must map names to version strings")
    sv = _req(obj, "security_version", int, "")
    if sv < 0:
        raise BadManifest("manifest security_version is negative")
    return Manifest(
        product=_req(obj, "product", str, ""),
        version=_req(obj, "version", str, ""),
        security_version=sv,
        build=build,
        artifacts=arts,
        verity=verity,
        packages=packages,
        format=fmt,
    )


# -- keys and signatures ---------------------------------------------------------------------


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    data = Path(path).read_bytes()
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise BadSignature(f"{path}: not an Ed25519 public key")
    return key


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Signer(Protocol):
    def public_key(self) -> Ed25519PublicKey: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class FileSigner:
    """Ed25519 key from an unencrypted PKCS#8 PEM file (dev and CI keys)."""

    path: Path
    _key: Ed25519PrivateKey = field(repr=False, compare=False)

    @classmethod
    def load(cls, path: str | Path) -> FileSigner:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise BadSignature(f"{path}: not an Ed25519 private key")
        return cls(Path(path), key)

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def generate_key_files(private_path: str | Path, public_path: str | Path) -> Ed25519PublicKey:
    """Write a fresh dev key pair (private 0600). Never commit the private key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    p = Path(private_path)
    p.touch(mode=0o600)
    p.write_bytes(pem)
    Path(public_path).write_bytes(public_key_pem(key.public_key()))
    return key.public_key()


def sign_manifest(manifest_bytes: bytes, signer: Signer) -> bytes:
    """Return the signature envelope (canonical JSON) for canonical manifest bytes."""
    parse_manifest(manifest_bytes)  # refuse to sign anything we would refuse to verify
    sig = signer.sign(DOMAIN + manifest_bytes)
    envelope = {
        "alg": SIG_ALG,
        "keyid": key_id(signer.public_key()),
        "sig": base64.b64encode(sig).decode(),
    }
    return canonical_json(envelope)


def verify_signature(
    manifest_bytes: bytes, envelope_bytes: bytes, pinned: Ed25519PublicKey
) -> None:
    """Raise unless `envelope_bytes` is a valid signature over `manifest_bytes` by `pinned`."""
    try:
        env = json.loads(envelope_bytes.decode("utf-8"), parse_float=_reject_float)
    except (UnicodeDecodeError, json.JSONDecodeError, BadManifest):
        raise BadSignature("signature file is not a JSON signature envelope") from None
    if not isinstance(env, dict) or set(env) != {"alg", "keyid", "sig"}:
        raise BadSignature("signature envelope must have exactly alg, keyid, sig")
    if env["alg"] != SIG_ALG:
        raise BadSignature(f"signature algorithm {env['alg']!r} is not {SIG_ALG}")
    expected = key_id(pinned)
    if env["keyid"] != expected:
        raise WrongKey(
            f"manifest is signed by another key (key id {str(env['keyid'])[:16]}..., "
            f"pinned key id {expected[:16]}...)"
        )
    try:
        sig = base64.b64decode(str(env["sig"]), validate=True)
    except ValueError:
        raise BadSignature("signature is not base64") from None
    try:
        pinned.verify(sig, DOMAIN + manifest_bytes)
    except InvalidSignature:
        raise BadSignature("manifest signature does not verify under the pinned key") from None
