"""The Debian archive state a build used (`packages.lock`) and rebuilds from it.

Rules and invariants:
- The lock names every .deb that went into the root (mmdebstrap's essential set and includes, the
  kernel and busybox-static unpacked by the base hook): package, version, architecture, size and
  sha256; plus the tools tree's package versions (informational).
- Every .deb is kept in a content-addressed cache (`<cache>/debs/<sha256>.deb`), so a rebuild does
  not depend on the archive still serving old versions.
- A rebuild from a lock builds the base from a local flat repository that holds exactly the
  locked files (each one checked against its recorded sha256 first), so apt cannot pick anything
  else; the resulting root, verity tree, UKIs and disk are the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image.errors import BuildError
from image.verify import file_extent, sha256_extent

LOCK_FORMAT = 1


@dataclass(frozen=True)
class LockedDeb:
    package: str
    version: str
    architecture: str
    size: int
    sha256: str

    @property
    def file_name(self) -> str:
        return f"{self.package}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


def _sha256(path: Path) -> str:
    return sha256_extent(file_extent(str(path)), path.stat().st_size)


def _fields(deb: Path) -> tuple[str, str, str]:
    out = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    f = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return f["Package"], f["Version"], f["Architecture"]


def collect(debs_dir: Path, deb_cache: Path) -> list[LockedDeb]:
    """Record the .debs in `debs_dir` and move them into the content-addressed cache."""
    deb_cache.mkdir(parents=True, exist_ok=True)
    found: dict[str, LockedDeb] = {}
    for deb in sorted(debs_dir.glob("*.deb")):
        pkg, ver, arch = _fields(deb)
        digest = _sha256(deb)
        found[pkg] = LockedDeb(pkg, ver, arch, deb.stat().st_size, digest)
        dest = deb_cache / f"{digest}.deb"
        if dest.exists():
            deb.unlink()
        else:
            shutil.move(deb, dest)
    shutil.rmtree(debs_dir, ignore_errors=True)
    return [found[k] for k in sorted(found)]


def lock_obj(
    debs: list[LockedDeb], suite: str, mirrors: list[str], tools: dict[str, str]
) -> dict[str, Any]:
    return {
        "format": LOCK_FORMAT,
        "suite": suite,
        "mirrors": mirrors,
        "packages": [vars(d).copy() for d in debs],
        "tools": dict(sorted(tools.items())),
    }


def write(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read(path: Path) -> list[LockedDeb]:
    try:
        obj = json.loads(path.read_text())
        if obj.get("format") != LOCK_FORMAT:
            raise BuildError(f"{path}: unknown lock format")
        return [LockedDeb(**p) for p in obj["packages"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BuildError(f"{path}: not a packages.lock ({exc.__class__.__name__})") from None


def locked_repo(debs: list[LockedDeb], deb_cache: Path, repo: Path, suite: str) -> Path:
    """A flat apt repository holding exactly the locked .debs, each checked against its hash."""
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    for d in debs:
        src = deb_cache / f"{d.sha256}.deb"
        if not src.exists():
            raise BuildError(f"locked {d.package} {d.version} is not in the deb cache {deb_cache}")
        if _sha256(src) != d.sha256:
            raise BuildError(f"cached {d.package} {d.version} does not match its locked sha256")
        if src.stat().st_dev == repo.stat().st_dev:
            os.link(src, repo / d.file_name)
        else:
            shutil.copyfile(src, repo / d.file_name)
    proc = subprocess.run(
        ["apt-ftparchive", "packages", "."], cwd=repo, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise BuildError(f"apt-ftparchive failed: {proc.stderr.strip()[-300:]}")
    (repo / "Packages").write_text(proc.stdout)
    # A Release naming the suite: mmdebstrap selects the essential set by archive/codename.
    opts = [f"APT::FTPArchive::Release::{k}={suite}" for k in ("Suite", "Codename")]
    release = subprocess.run(
        ["apt-ftparchive", "-o", opts[0], "-o", opts[1], "release", "."],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    if release.returncode != 0:
        raise BuildError(f"apt-ftparchive release failed: {release.stderr.strip()[-300:]}")
    (repo / "Release").write_text(release.stdout)
    return repo
