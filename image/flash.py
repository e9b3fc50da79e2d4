"""`kmsnode-image flash`: write a signed disk image to a device or file, verified before and after.

Rules (python-tuf order; nothing is written until every check passed):
1. manifest signature by the pinned key, product, and - if the target already holds a kmsnode
   disk - no rollback below its installed security_version;
2. disk image size and sha256; slot A's root and verity partitions hash to the manifest's
   root.img/root.verity and the re-derived verity tree matches the signed root hash;
3. the target is not mounted, not the image itself, and large enough;
4. a target that holds an installed appliance (a kmsnode layout whose state partition has been
   set up: LUKS2 or a filesystem) is only overwritten with `wipe_state=True`;
then write, fsync, drop the page cache, re-read and check sha256 and verity again on the target.
Write order: both GPT headers of the target are invalidated first and the image's first MiB
(its primary GPT) is written last, so an interrupted flash leaves a disk no firmware boots, never a
mix of the old partition table and new contents.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from image import bootstate, gpt
from image.errors import ImageError, TargetRefused, WriteFailed
from image.manifest import Manifest
from image.target import WriteHook, capacity, check_not_mounted, copy_extent, drop_cache
from image.verify import Extent, check_artifact, check_manifest, check_verity, file_extent

HEAD = 1 << 20  # primary GPT and protective MBR live in the first MiB of the image


def _invalidate_gpt(fd: int, capacity_: int | None) -> None:
    """Zero the target's primary GPT header and its backup header (last sector), if any."""
    os.pwrite(fd, b"\x00" * 512, 512)
    if capacity_:
        last = capacity_ - 512
        if os.pread(fd, 8, last) == b"EFI PART":
            os.pwrite(fd, b"\x00" * 512, last)
    os.fsync(fd)


def manifest_paths(image: str, manifest: str | None) -> tuple[Path, Path]:
    m = Path(manifest) if manifest else Path(image).parent / "manifest.json"
    return m, m.with_suffix(".sig")


def _installed_security_version(target: str) -> int | None:
    try:
        layout = gpt.read_layout(target)
        state, _ = bootstate.read(target, layout["bootstate"].offset)
    except (ImageError, OSError):
        return None
    return state.installed_security_version()


def holds_state(target: str) -> bool:
    """True when `target` is a kmsnode disk whose state partition has been initialised."""
    try:
        layout = gpt.read_layout(target)
        with open(target, "rb") as f:
            f.seek(layout["state"].offset)
            head = f.read(2048)
    except (ImageError, OSError):
        return False
    # LUKS2 header magic at 0, or an ext4 superblock magic at 1024 + 56.
    return head[:6] == b"LUKS\xba\xbe" or head[1080:1082] == b"\x53\xef"


def check_slot_a(manifest: Manifest, disk: str) -> None:
    layout = gpt.read_layout(disk)
    root = Extent(disk, layout["root-a"].offset, layout["root-a"].size)
    tree = Extent(disk, layout["verity-a"].offset, layout["verity-a"].size)
    check_artifact(manifest, "root.img", root)
    check_artifact(manifest, "root.verity", tree)
    check_verity(manifest, root, tree)


def flash(
    image: str,
    target: str,
    pinned: Ed25519PublicKey,
    product: str,
    manifest_path: str | None = None,
    hook: WriteHook | None = None,
    log: Callable[[str], None] = print,
    wipe_state: bool = False,
) -> Manifest:
    mpath, spath = manifest_paths(image, manifest_path)
    try:
        mbytes, sbytes = mpath.read_bytes(), spath.read_bytes()
    except OSError as exc:
        raise TargetRefused(
            f"cannot read manifest {mpath} or its signature: {exc.strerror}"
        ) from None
    if os.path.exists(target) and os.path.samefile(image, target):
        raise TargetRefused("target is the image itself")
    manifest = check_manifest(mbytes, sbytes, pinned, product, _installed_security_version(target))
    log(
        f"signature OK (product {manifest.product} {manifest.version}, "
        f"security_version {manifest.security_version})"
    )
    check_artifact(manifest, "disk.img", file_extent(image), exact=True)
    check_slot_a(manifest, image)
    log("image hashes and verity root hash OK")
    size = manifest.artifacts["disk.img"].size
    check_not_mounted(target)
    cap = capacity(target)
    if cap is not None and cap < size:
        raise TargetRefused(f"target {target} is too small: {cap} bytes, image needs {size}")
    if holds_state(target) and not wipe_state:
        raise TargetRefused(
            f"{target} holds an installed kmsnode appliance with its sealed state; "
            "use `update` to keep it, or flash with --wipe-state to erase it"
        )
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _invalidate_gpt(fd, cap)
        src = file_extent(image)
        body = Extent(src.path, HEAD, size - HEAD)
        copy_extent(body, size - HEAD, fd, HEAD, "disk.img", hook)
        copy_extent(Extent(src.path, 0, HEAD), HEAD, fd, 0, "disk.img", hook)
        drop_cache(fd)
    finally:
        os.close(fd)
    log(f"wrote {size} bytes to {target}; verifying")
    try:
        check_artifact(manifest, "disk.img", Extent(target, 0, size))
        check_slot_a(manifest, target)
    except ImageError as exc:
        raise WriteFailed(f"read-back verification of {target} failed: {exc}") from None
    log("read-back verification OK")
    return manifest
