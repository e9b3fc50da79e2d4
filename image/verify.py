"""Verification of manifests and artifacts, in the python-tuf order, before anything is written.

Order (each step only runs if the previous passed):
1. signature over the received manifest bytes, by the pinned key (`WrongKey`, `BadSignature`);
2. manifest well-formed and canonical (`BadManifest`);
3. product matches (`WrongProduct`);
4. security_version not lower than the installed one (`Downgrade`) - no rollback;
5. every artifact's size (`Truncated`) and sha256 (`HashMismatch`);
6. the dm-verity tree re-derived from the root bytes equals the shipped tree and the signed root
   hash (`VerityMismatch`).
`Extent` names bytes inside a file (a bundle member, a partition), so the same checks run on a
bundle before writing and on the target after writing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from image.errors import Downgrade, HashMismatch, Truncated, VerityMismatch, WrongProduct
from image.manifest import Manifest, parse_manifest, verify_signature
from image.verity import VerityParams, tree_for_bytes

CHUNK = 1 << 20


@dataclass(frozen=True)
class Extent:
    path: str
    offset: int
    length: int  # bytes available at offset (file or partition size)


def check_manifest(
    manifest_bytes: bytes,
    sig_bytes: bytes,
    pinned: Ed25519PublicKey,
    product: str,
    installed_security_version: int | None = None,
) -> Manifest:
    verify_signature(manifest_bytes, sig_bytes, pinned)
    manifest = parse_manifest(manifest_bytes)
    if manifest.product != product:
        raise WrongProduct(
            f"image is for product {manifest.product!r}, this target runs {product!r}"
        )
    if (
        installed_security_version is not None
        and manifest.security_version < installed_security_version
    ):
        raise Downgrade(
            f"refusing rollback: bundle security_version {manifest.security_version} is lower than "
            f"the installed {installed_security_version}"
        )
    return manifest


def read_extent(ext: Extent, size: int) -> bytes:
    if size > ext.length:
        raise Truncated(
            f"{ext.path}: needs {size} bytes at offset {ext.offset}, only {ext.length} present"
        )
    with open(ext.path, "rb") as f:
        f.seek(ext.offset)
        data = f.read(size)
    if len(data) != size:
        raise Truncated(f"{ext.path}: truncated ({len(data)} of {size} bytes)")
    return data


def sha256_extent(ext: Extent, size: int) -> str:
    if size > ext.length:
        raise Truncated(
            f"{ext.path}: needs {size} bytes at offset {ext.offset}, only {ext.length} present"
        )
    h = hashlib.sha256()
    with open(ext.path, "rb") as f:
        f.seek(ext.offset)
        left = size
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise Truncated(f"{ext.path}: truncated ({size - left} of {size} bytes)")
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def check_artifact(manifest: Manifest, name: str, ext: Extent, exact: bool = False) -> None:
    """Size and sha256 of artifact `name` at `ext`; `exact` also refuses trailing bytes."""
    art = manifest.artifacts.get(name)
    if art is None:
        raise HashMismatch(f"manifest lists no artifact {name!r}")
    if exact and ext.length != art.size:
        raise Truncated(f"{name}: {ext.length} bytes, manifest says {art.size}")
    digest = sha256_extent(ext, art.size)
    if not hmac.compare_digest(digest, art.sha256):
        raise HashMismatch(
            f"{name}: sha256 {digest[:16]}... differs from the manifest's {art.sha256[:16]}..."
        )


def verity_params(manifest: Manifest) -> VerityParams:
    v = manifest.verity
    return VerityParams(
        salt=bytes.fromhex(v.salt),
        uuid=v.uuid,
        data_block_size=v.data_block_size,
        hash_block_size=v.hash_block_size,
        hash_alg=v.hash_alg,
    )


def check_verity(manifest: Manifest, root: Extent, tree: Extent) -> None:
    """Re-derive the verity tree from the root bytes; compare with the tree bytes and root hash."""
    v = manifest.verity
    root_size = manifest.artifacts["root.img"].size
    if v.format != 1 or v.data_blocks * v.data_block_size != root_size:
        raise VerityMismatch("verity parameters do not describe root.img")
    computed = tree_for_bytes(read_extent(root, root_size), verity_params(manifest))
    if not hmac.compare_digest(computed.root_hash.hex(), v.root_hash):
        raise VerityMismatch("verity root hash of the root image differs from the signed manifest")
    stored = read_extent(tree, manifest.artifacts["root.verity"].size)
    if not hmac.compare_digest(stored, computed.hash_image):
        raise VerityMismatch("verity hash tree differs from the one derived from the root image")


def file_extent(path: str) -> Extent:
    return Extent(path, 0, os.stat(path).st_size)
