"""Update bundle: one uncompressed ustar file with a fixed member order.

Members: manifest.json, manifest.sig, root.img, root.verity, uki-a.efi, uki-b.efi (the signed
UKI for each slot: kernel, initramfs and command line update together with the root).
Rules:
- Reproducible: fixed order, mtime = SOURCE_DATE_EPOCH, uid/gid 0, mode 0644, no names of the
  build host.
- Reading never extracts: members are returned as extents (offset, size) inside the bundle, so the
  updater can stream them into a slot; a member that runs past the end of the file is `Truncated`.
- Unknown members, duplicate members or links are refused.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from image.errors import BadManifest, Truncated
from image.verify import Extent

REQUIRED = ("manifest.json", "manifest.sig", "root.img", "root.verity", "uki-a.efi", "uki-b.efi")
OPTIONAL: tuple[str, ...] = ()
MAX_META = 1 << 20


@dataclass(frozen=True)
class OpenedBundle:
    path: str
    manifest_bytes: bytes
    sig_bytes: bytes
    members: dict[str, Extent]


def create_bundle(
    out: Path, manifest_bytes: bytes, sig_bytes: bytes, files: dict[str, Path], epoch: int
) -> None:
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:

        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), epoch, 0o644
            import io

            tar.addfile(info, io.BytesIO(data))

        add_bytes("manifest.json", manifest_bytes)
        add_bytes("manifest.sig", sig_bytes)
        for name in (*REQUIRED[2:], *OPTIONAL):
            if name not in files:
                continue
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = files[name].stat().st_size, epoch, 0o644
            with open(files[name], "rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, out)


def open_bundle(path: str) -> OpenedBundle:
    size = os.stat(path).st_size
    members: dict[str, Extent] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    raise BadManifest(f"bundle member {m.name!r} is not a regular file")
                if m.name not in (*REQUIRED, *OPTIONAL) or m.name in members:
                    raise BadManifest(f"bundle has an unexpected or duplicate member {m.name!r}")
                if m.offset_data + m.size > size:
                    raise Truncated(f"bundle is truncated inside {m.name!r}")
                members[m.name] = Extent(path, m.offset_data, m.size)
    except tarfile.TarError as exc:
        raise Truncated(f"bundle is truncated or not a bundle ({exc})") from None
    missing = [n for n in REQUIRED if n not in members]
    if missing:
        raise Truncated(f"bundle lacks {', '.join(missing)} (truncated?)")

    def small(name: str) -> bytes:
        ext = members[name]
        if ext.length > MAX_META:
            raise BadManifest(f"{name} is too large")
        with open(path, "rb") as f:
            f.seek(ext.offset)
            return f.read(ext.length)

    return OpenedBundle(path, small("manifest.json"), small("manifest.sig"), members)
