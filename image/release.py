"""Turn a root filesystem image into release artifacts: verity tree, disk image, signed manifest,
update bundle. Used by the full build and by tests (with a small synthetic root).

Rules:
- Verity salt = sha256(product || version || security_version) and a UUID derived from it, so two
  builds of the same inputs give the same tree and root hash (no randomness anywhere).
- The manifest is signed last, over everything it names; the disk image carries an initial
  bootstate (slot a good, slot b empty) built from the same data.
- Each slot gets its own signed UKI (uki-a.efi, uki-b.efi: the command line names the slot and
  the verity root hash); both are release artifacts and bundle members, so an update installs the
  kernel, initramfs and command line together with the root. The disk image's ESP holds
  systemd-boot and slot a's UKI.
- Outputs: root.img, root.verity, uki-a.efi, uki-b.efi, disk.img, manifest.json, manifest.sig,
  <product>-<version>.kmsupd.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

from image import bootstate
from image.bundle import create_bundle
from image.disk import DiskLayout, make_disk
from image.esp import entry_name, make_esp_image
from image.manifest import Artifact, BuildInfo, Manifest, Signer, VerityInfo, sign_manifest
from image.uki import SLOTS, BootChain, cmdline, unsigned_test_chain
from image.update import initial_state
from image.verity import VerityParams, tree_for_bytes

BUILDER = "kmsnode-image 2"


@dataclass(frozen=True)
class ReleaseInfo:
    product: str
    version: str
    security_version: int
    commit: str
    source_date_epoch: int
    suite: str


@dataclass(frozen=True)
class ReleaseOutputs:
    manifest: Manifest
    disk: Path
    bundle: Path
    manifest_path: Path
    sig_path: Path


def sha256_file(path: Path) -> Artifact:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return Artifact(path.stat().st_size, h.hexdigest())


def verity_params_for(info: ReleaseInfo) -> VerityParams:
    salt = hashlib.sha256(
        f"{info.product}\0{info.version}\0{info.security_version}".encode()
    ).digest()
    return VerityParams(salt=salt, uuid=str(uuid.UUID(bytes=salt[:16], version=4)))


def assemble(
    out: Path,
    root_img: Path,
    info: ReleaseInfo,
    signer: Signer,
    packages: dict[str, str],
    extras: dict[str, Path] | None = None,
    layout: DiskLayout | None = None,
    chain: BootChain | None = None,
) -> ReleaseOutputs:
    """`chain` None: placeholder boot files (unit tests of the update logic only)."""
    out.mkdir(parents=True, exist_ok=True)
    chain = chain or unsigned_test_chain(out / "test-chain")
    params = verity_params_for(info)
    tree = tree_for_bytes(root_img.read_bytes(), params)
    verity_path = out / "root.verity"
    verity_path.write_bytes(tree.hash_image)
    artifacts = {"root.img": sha256_file(root_img), "root.verity": sha256_file(verity_path)}
    verity = VerityInfo(
        root_hash=tree.root_hash.hex(),
        salt=params.salt.hex(),
        uuid=params.uuid,
        data_blocks=tree.data_blocks,
    )
    ukis = {f"uki-{slot}.efi": out / f"uki-{slot}.efi" for slot in SLOTS}
    for slot in SLOTS:
        chain.make_uki(slot, cmdline(verity, slot), ukis[f"uki-{slot}.efi"])
    extras = {**ukis, **(extras or {})}
    for name, path in extras.items():
        artifacts[name] = sha256_file(path)
    build = BuildInfo(info.commit, info.source_date_epoch, info.suite, BUILDER)
    draft = Manifest(
        info.product, info.version, info.security_version, build, artifacts, verity, packages
    )
    layout = layout or DiskLayout.for_root(
        artifacts["root.img"].size, artifacts["root.verity"].size
    )
    disk = out / "disk.img"
    seed = str(uuid.UUID(bytes=hashlib.sha256(b"disk\0" + tree.root_hash).digest()[:16], version=4))
    first = initial_state(draft)
    esp = out / "esp.img"
    make_esp_image(
        esp,
        layout.esp,
        chain.boot_loader,
        {entry_name(first.seq + 1, "a", None): ukis["uki-a.efi"]},
        info.source_date_epoch,
    )
    make_disk(disk, layout, root_img, verity_path, bootstate.initial_image(first), seed, esp)
    esp.unlink()
    artifacts["disk.img"] = sha256_file(disk)
    manifest = Manifest(
        info.product, info.version, info.security_version, build, artifacts, verity, packages
    )
    mbytes = manifest.canonical_bytes()
    sig = sign_manifest(mbytes, signer)
    mpath, spath = out / "manifest.json", out / "manifest.sig"
    mpath.write_bytes(mbytes)
    spath.write_bytes(sig)
    bundle = out / f"{info.product}-{info.version}.kmsupd"
    files = {"root.img": root_img, "root.verity": verity_path, **extras}
    create_bundle(bundle, mbytes, sig, files, info.source_date_epoch)
    return ReleaseOutputs(manifest, disk, bundle, mpath, spath)
