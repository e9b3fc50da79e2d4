"""The pure-Python dm-verity tree equals veritysetup's, byte for byte."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from image.verity import VerityParams, tree_for_bytes

UUID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f0"


def veritysetup(data: Path, hash_path: Path, salt: bytes) -> str:
    if shutil.which("veritysetup") is None:
        pytest.skip("veritysetup not installed (apt package cryptsetup-bin)")
    out = data.with_suffix(".roothash")
    subprocess.run(
        [
            "veritysetup",
            "format",
            f"--salt={salt.hex() or '-'}",
            f"--uuid={UUID}",
            f"--root-hash-file={out}",
            str(data),
            str(hash_path),
        ],
        check=True,
        capture_output=True,
    )
    return out.read_text().strip()


@pytest.mark.parametrize(
    ("blocks", "salt"),
    [
        (1, b"\x01" * 32),
        (2, b"\x02" * 32),
        (128, b"\xaa"),
        (129, b"\x03" * 32),
        (300, b""),
        (16385, os.urandom(32)),
    ],
    ids=["one-block", "two-blocks", "one-full-hash-block", "two-levels", "no-salt", "three-levels"],
)
def test_pure_python_tree_equals_veritysetup(tmp_path: Path, blocks: int, salt: bytes) -> None:
    data = tmp_path / "root.img"
    data.write_bytes(os.urandom(blocks * 4096))
    root_hash = veritysetup(data, tmp_path / "root.verity", salt)
    tree = tree_for_bytes(data.read_bytes(), VerityParams(salt, UUID))
    assert tree.root_hash.hex() == root_hash
    assert tree.hash_image == (tmp_path / "root.verity").read_bytes()


def test_veritysetup_verify_accepts_our_tree_and_rejects_a_changed_byte(tmp_path: Path) -> None:
    data = tmp_path / "root.img"
    raw = bytearray(os.urandom(200 * 4096))
    data.write_bytes(raw)
    veritysetup(data, tmp_path / "ref.verity", b"\x05" * 32)
    tree = tree_for_bytes(bytes(raw), VerityParams(b"\x05" * 32, UUID))
    (tmp_path / "ours.verity").write_bytes(tree.hash_image)
    ok = subprocess.run(
        ["veritysetup", "verify", str(data), str(tmp_path / "ours.verity"), tree.root_hash.hex()],
        capture_output=True,
    )
    assert ok.returncode == 0
    raw[123457] ^= 0x01
    data.write_bytes(raw)
    bad = subprocess.run(
        ["veritysetup", "verify", str(data), str(tmp_path / "ours.verity"), tree.root_hash.hex()],
        capture_output=True,
    )
    assert bad.returncode != 0


def test_one_changed_byte_changes_the_root_hash() -> None:
    raw = bytearray(bytes(range(256)) * 16 * 10)
    p = VerityParams(b"salt", UUID)
    before = tree_for_bytes(bytes(raw), p).root_hash
    raw[5000] ^= 0x80
    assert tree_for_bytes(bytes(raw), p).root_hash != before


def test_refuses_data_that_is_not_whole_blocks() -> None:
    with pytest.raises(ValueError, match="multiple"):
        tree_for_bytes(b"\x00" * 5000, VerityParams(b"", UUID))
