"""The A/B slot record kept in the `bootstate` partition: two copies, sequence number, CRC32.

Rules and invariants:
- The record is canonical JSON in a 4096-byte block: magic, u32 length, payload, CRC32 of
  magic+length+payload, zero padding. Copies live at offsets 0 and 4096.
- The valid copy with the highest `seq` wins; a torn or corrupt copy is ignored.
- Writing replaces the copy that is *not* the current winner with `seq + 1`, then fsyncs. The
  winner is never overwritten, so a power cut at any byte leaves either the old or the new record
  in force: the slot switch is atomic.
- `min_security_version` is the anti-rollback floor; it never decreases. It is raised when a slot
  is marked good (after its first healthy boot), so a freshly installed slot can still fall back.
- `active` is the slot the boot loader is expected to boot (the newest install); `booted` is the
  last slot that booted healthy (set by mark-good). An update writes the slot that is neither
  running nor, while the running slot is unproven, the last good one.
- A pending slot that lost its tries (the boot loader fell back) is recorded `bad` by the next
  healthy boot of the other slot.
- Bytes at MACHINE_ID_OFFSET hold the appliance's machine id, written once by the initramfs.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

from image.errors import TargetRefused
from image.manifest import canonical_json

MAGIC = b"KMSBOOT1"
BLOCK = 4096
EMPTY = "empty"
PENDING = "pending"  # installed, not yet booted healthy
GOOD = "good"
BAD = "bad"  # installed, failed its boot tries
MACHINE_ID_OFFSET = 65536


@dataclass(frozen=True)
class SlotState:
    state: str = EMPTY
    version: str = ""
    security_version: int = 0
    root_hash: str = ""
    root_size: int = 0
    verity_size: int = 0


@dataclass(frozen=True)
class BootState:
    product: str
    active: str
    min_security_version: int
    slots: dict[str, SlotState] = field(default_factory=dict)
    seq: int = 0
    booted: str = "a"

    def other(self, slot: str | None = None) -> str:
        s = slot or self.active
        return "b" if s == "a" else "a"

    def installed_security_version(self) -> int:
        return max(self.min_security_version, self.slots[self.active].security_version)

    def to_obj(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "active": self.active,
            "min_security_version": self.min_security_version,
            "seq": self.seq,
            "booted": self.booted,
            "slots": {k: vars(v).copy() for k, v in sorted(self.slots.items())},
        }

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> BootState:
        slots = {k: SlotState(**v) for k, v in obj["slots"].items()}
        bs = cls(
            obj["product"],
            obj["active"],
            int(obj["min_security_version"]),
            slots,
            int(obj["seq"]),
            obj["booted"],
        )
        if bs.active not in ("a", "b") or bs.booted not in ("a", "b") or set(slots) != {"a", "b"}:
            raise ValueError("bad slot names")
        return bs


def encode(state: BootState) -> bytes:
    payload = canonical_json(state.to_obj())
    head = MAGIC + struct.pack("<I", len(payload)) + payload
    rec = head + struct.pack("<I", zlib.crc32(head) & 0xFFFFFFFF)
    if len(rec) > BLOCK:
        raise ValueError("boot state record too large")
    return rec.ljust(BLOCK, b"\x00")


def decode(block: bytes) -> BootState | None:
    """The record in one copy, or None if the copy is torn, empty or corrupt."""
    if len(block) < 16 or block[:8] != MAGIC:
        return None
    (length,) = struct.unpack_from("<I", block, 8)
    end = 12 + length
    if end + 4 > len(block):
        return None
    (crc,) = struct.unpack_from("<I", block, end)
    if zlib.crc32(block[:end]) & 0xFFFFFFFF != crc:
        return None
    import json

    try:
        return BootState.from_obj(json.loads(block[12:end]))
    except (ValueError, KeyError, TypeError):
        return None


def initial_image(state: BootState) -> bytes:
    """Both copies for a fresh disk image (copy 0 holds seq 1, copy 1 is empty)."""
    return encode(replace(state, seq=1)) + b"\x00" * BLOCK


def read(path: str, offset: int) -> tuple[BootState, int]:
    """The winning record and the index of the copy holding it."""
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(2 * BLOCK)
    copies = [decode(raw[:BLOCK]), decode(raw[BLOCK : 2 * BLOCK])]
    best: tuple[BootState, int] | None = None
    for i, c in enumerate(copies):
        if c is not None and (best is None or c.seq > best[0].seq):
            best = (c, i)
    if best is None:
        raise TargetRefused(f"{path}: no valid boot state record (not flashed with kmsnode-image?)")
    return best


def write(path: str, offset: int, new: BootState) -> BootState:
    """Commit `new` atomically: write the losing copy with seq+1, fsync; return the record."""
    current, winner = read(path, offset)
    record = replace(new, seq=current.seq + 1)
    if record.min_security_version < current.min_security_version:
        raise ValueError("anti-rollback floor must not decrease")
    target = 1 - winner
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, encode(record), offset + target * BLOCK)
        os.fsync(fd)
    finally:
        os.close(fd)
    return record
