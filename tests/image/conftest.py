"""Fixtures for image tests: throw-away signing keys and a small synthetic release.

The synthetic release uses a random (seeded) 'root image' instead of a Debian root, so unit tests
exercise the real manifest/verity/disk/bundle code in seconds without mmdebstrap.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from image.disk import MIB, DiskLayout
from image.manifest import FileSigner, Signer, generate_key_files
from image.release import ReleaseInfo, ReleaseOutputs, assemble

ROOT_BLOCKS = 300
LAYOUT = DiskLayout.for_root(ROOT_BLOCKS * 4096, 20480, headroom=50, state=2 * MIB, esp=2 * MIB)


def needs_disk_tools() -> None:
    for tool in ("systemd-repart", "mkfs.vfat"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


@dataclass(frozen=True)
class Keys:
    signer: FileSigner
    other: FileSigner
    public_pem: Path
    other_public_pem: Path


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    generate_key_files(d / "release.pem", d / "release.pub")
    generate_key_files(d / "other.pem", d / "other.pub")
    return Keys(
        FileSigner.load(d / "release.pem"),
        FileSigner.load(d / "other.pem"),
        d / "release.pub",
        d / "other.pub",
    )


def make_release(
    out: Path,
    signer: Signer,
    version: str = "1.0.0",
    security_version: int = 5,
    product: str = "kmsnode",
    seed: int = 1,
) -> ReleaseOutputs:
    needs_disk_tools()
    out.mkdir(parents=True, exist_ok=True)
    root = out / "src-root.img"
    root.write_bytes(random.Random(seed).randbytes(ROOT_BLOCKS * 4096))
    info = ReleaseInfo(product, version, security_version, "0" * 40, 1767225600, "trixie")
    return assemble(out / "out", root, info, signer, {"python3": "3.13.5-1"}, layout=LAYOUT)


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> ReleaseOutputs:
    return make_release(tmp_path_factory.mktemp("rel-1.0.0"), keys.signer)


@pytest.fixture(scope="session")
def release_next(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> ReleaseOutputs:
    return make_release(tmp_path_factory.mktemp("rel-1.1.0"), keys.signer, "1.1.0", 6, seed=2)


@pytest.fixture(scope="session")
def release_old(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> ReleaseOutputs:
    return make_release(tmp_path_factory.mktemp("rel-0.9.0"), keys.signer, "0.9.0", 4, seed=3)


@pytest.fixture
def flashed(tmp_path: Path, release: ReleaseOutputs, keys: Keys) -> Path:
    """A disk file holding a flashed 1.0.0 image (slot a active and good)."""
    from image.flash import flash

    target = tmp_path / "disk.img"
    flash(str(release.disk), str(target), keys.signer.public_key(), "kmsnode", log=lambda _: None)
    return target
