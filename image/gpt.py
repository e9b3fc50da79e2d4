"""Read-only GPT parser and the appliance's partition layout (Discoverable Partitions Spec types).

Rules:
- Only the primary header is read; header and entry-array CRC32s must match, else `TargetRefused`.
- Partitions are found by their GPT *label*; the DPS *type* must match too, so a foreign disk that
  happens to use our labels is refused.
- The layout: esp, root-a, verity-a, root-b, verity-b, bootstate (two-copy slot record), state.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

from image.errors import TargetRefused

# Discoverable Partitions Specification type UUIDs (x86-64)
ESP = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
ROOT_X86_64 = uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
ROOT_X86_64_VERITY = uuid.UUID("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5")
LINUX_GENERIC = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")

SLOTS = ("a", "b")

LAYOUT: dict[str, uuid.UUID] = {
    "esp": ESP,
    "root-a": ROOT_X86_64,
    "verity-a": ROOT_X86_64_VERITY,
    "root-b": ROOT_X86_64,
    "verity-b": ROOT_X86_64_VERITY,
    "bootstate": LINUX_GENERIC,
    "state": LINUX_GENERIC,
}


@dataclass(frozen=True)
class Partition:
    number: int
    type_uuid: uuid.UUID
    part_uuid: uuid.UUID
    first_lba: int
    last_lba: int
    label: str
    sector_size: int

    @property
    def offset(self) -> int:
        return self.first_lba * self.sector_size

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * self.sector_size


def parse_gpt(read_at: bytes, sector_size: int = 512) -> list[Partition]:
    """Parse a GPT from the first bytes of a disk (at least 34 sectors)."""
    hdr = read_at[sector_size : sector_size + 92]
    if len(hdr) < 92 or hdr[:8] != b"EFI PART":
        raise TargetRefused("target has no GPT partition table")
    (hsize,) = struct.unpack_from("<I", hdr, 12)
    header = read_at[sector_size : sector_size + hsize]
    crc = struct.unpack_from("<I", header, 16)[0]
    if zlib.crc32(header[:16] + b"\x00" * 4 + header[20:]) & 0xFFFFFFFF != crc:
        raise TargetRefused("GPT header checksum mismatch")
    entries_lba, count, esize, ecrc = struct.unpack_from("<QIII", header, 72)
    start = entries_lba * sector_size
    table = read_at[start : start + count * esize]
    if len(table) != count * esize:
        raise TargetRefused("GPT entry array is truncated")
    if zlib.crc32(table) & 0xFFFFFFFF != ecrc:
        raise TargetRefused("GPT entry array checksum mismatch")
    parts = []
    for i in range(count):
        e = table[i * esize : (i + 1) * esize]
        type_uuid = uuid.UUID(bytes_le=e[:16])
        if type_uuid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        label = e[56:128].decode("utf-16-le").split("\x00", 1)[0]
        parts.append(
            Partition(
                i + 1, type_uuid, uuid.UUID(bytes_le=e[16:32]), first, last, label, sector_size
            )
        )
    return parts


def read_layout(path: str) -> dict[str, Partition]:
    """The appliance layout of a disk image or block device, checked against LAYOUT."""
    with open(path, "rb") as f:
        head = f.read(512 * 2048)
    parts = {p.label: p for p in parse_gpt(head)}
    missing = [name for name in LAYOUT if name not in parts]
    if missing:
        raise TargetRefused(f"{path}: not a kmsnode disk (missing partitions {', '.join(missing)})")
    for name, typ in LAYOUT.items():
        if parts[name].type_uuid != typ:
            raise TargetRefused(
                f"{path}: partition {name} has type {parts[name].type_uuid}, expected {typ}"
            )
    return {name: parts[name] for name in LAYOUT}
