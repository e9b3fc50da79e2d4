"""Pure-Python dm-verity hash tree, byte-identical to `veritysetup format` (format 1).

Rules and invariants (cryptsetup lib/verity, kernel Documentation/admin-guide/device-mapper/verity):
- Format 1: every block hash is H(salt || block); hashes are stored at a stride of the digest size
  rounded up to a power of two, each hash block zero-padded.
- The hash device starts with a 512-byte superblock padded to one hash block; then the levels of
  the tree, the *top* level first; level 0 (hashes of the data blocks) last.
- Number of levels: the smallest L with hashes_per_block**L >= data_blocks (0 for one data block,
  in which case the root hash is the hash of that block and the device holds only the superblock).
- Root hash = H(salt || the single top-level block).
The flash and update tools use this to re-derive the tree from the bytes they wrote, so a changed
byte anywhere in the root or its tree is caught before a slot is switched.
"""

from __future__ import annotations

import hashlib
import struct
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass

SUPERBLOCK_SIZE = 512
_SIGNATURE = b"verity\x00\x00"


@dataclass(frozen=True)
class VerityParams:
    salt: bytes
    uuid: str
    data_block_size: int = 4096
    hash_block_size: int = 4096
    hash_alg: str = "sha256"

    def __post_init__(self) -> None:
        for size in (self.data_block_size, self.hash_block_size):
            if size < 512 or size & (size - 1):
                raise ValueError("block sizes must be powers of two >= 512")
        if len(self.salt) > 256:
            raise ValueError("salt longer than 256 bytes")
        uuidlib.UUID(self.uuid)


@dataclass(frozen=True)
class VerityTree:
    root_hash: bytes
    data_blocks: int
    hash_image: bytes  # superblock + tree, exactly what veritysetup writes


def _digest_stride(digest_size: int) -> int:
    stride = 1
    while stride < digest_size:
        stride <<= 1
    return stride


def superblock(params: VerityParams, data_blocks: int) -> bytes:
    alg = params.hash_alg.encode("ascii")
    sb = (
        _SIGNATURE
        + struct.pack("<II", 1, 1)
        + uuidlib.UUID(params.uuid).bytes
        + alg.ljust(32, b"\x00")
        + struct.pack(
            "<IIQH", params.data_block_size, params.hash_block_size, data_blocks, len(params.salt)
        )
        + b"\x00" * 6
        + params.salt.ljust(256, b"\x00")
    )
    sb += b"\x00" * (SUPERBLOCK_SIZE - len(sb))
    return sb + b"\x00" * (params.hash_block_size - SUPERBLOCK_SIZE)


def build_tree(
    read_block: Callable[[int], bytes], data_blocks: int, params: VerityParams
) -> VerityTree:
    """Compute the tree for `data_blocks` blocks; `read_block(i)` returns data block i."""
    if data_blocks < 1:
        raise ValueError("no data blocks")
    salt = params.salt
    alg = params.hash_alg
    digest_size = hashlib.new(alg).digest_size
    stride = _digest_stride(digest_size)
    per_block = params.hash_block_size // stride
    pad = b"\x00" * (stride - digest_size)

    def h(block: bytes) -> bytes:
        d = hashlib.new(alg, salt)
        d.update(block)
        return d.digest()

    if data_blocks == 1:
        return VerityTree(h(read_block(0)), 1, superblock(params, 1))

    levels: list[bytes] = []  # level 0 first
    hashes = [h(read_block(i)) + pad for i in range(data_blocks)]
    while True:
        blocks = []
        for start in range(0, len(hashes), per_block):
            chunk = b"".join(hashes[start : start + per_block])
            blocks.append(chunk.ljust(params.hash_block_size, b"\x00"))
        levels.append(b"".join(blocks))
        if len(blocks) == 1:
            root = h(blocks[0])
            break
        hashes = [h(b) + pad for b in blocks]
    image = superblock(params, data_blocks) + b"".join(reversed(levels))
    return VerityTree(root, data_blocks, image)


def tree_for_bytes(data: bytes, params: VerityParams) -> VerityTree:
    bs = params.data_block_size
    if len(data) % bs:
        raise ValueError(f"data size {len(data)} is not a multiple of {bs}")
    view = memoryview(data)
    return build_tree(lambda i: bytes(view[i * bs : (i + 1) * bs]), len(data) // bs, params)


def tree_for_file(path: str, size: int, params: VerityParams, offset: int = 0) -> VerityTree:
    """Tree over `size` bytes of `path` starting at `offset` (a partition inside a disk)."""
    bs = params.data_block_size
    if size % bs:
        raise ValueError(f"data size {size} is not a multiple of {bs}")
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise ValueError(f"{path}: short read ({len(data)} of {size} bytes)")
    return tree_for_bytes(data, params)
