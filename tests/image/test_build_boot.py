"""Slow: the real build (mmdebstrap trixie -> erofs -> verity -> repart), its reproducibility, the
unit gate with the image's own systemd, and QEMU/TCG boots of the verity root.

Run by `make test-image` (pytest -m slow tests/image). Needs root, network access to the Debian
archive and PyPI (first build only; later builds hit the cache), qemu-system-x86, mmdebstrap,
erofs-utils, dosfstools, cpio. QEMU always runs under its own `timeout`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from image import boot, gpt
from image.build import Progress, build
from image.config import BuildPaths, ImageConfig
from image.manifest import FileSigner, generate_key_files
from image.release import ReleaseOutputs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KMSNODE_IMAGE_CACHE", "/var/cache/kmsnode-image"))
BOOT_TIMEOUT = 420  # QEMU's own hard limit (timeout --signal=KILL)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Built:
    first: ReleaseOutputs
    second: ReleaseOutputs
    seconds_first: float
    seconds_second: float
    paths: BuildPaths


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if os.geteuid() != 0:
        pytest.skip("the image build needs root (mmdebstrap --mode=root, loop/chroot)")
    for tool in ("mmdebstrap", "mkfs.erofs", "systemd-repart", "mkfs.vfat", "cpio"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    keys = tmp_path_factory.mktemp("image-keys")
    generate_key_files(keys / "release.pem", keys / "release.pub")
    signer = FileSigner.load(keys / "release.pem")
    # Pin the commit: other engineers may commit between the two builds.
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    outs, times = [], []
    for n in (1, 2):
        paths = BuildPaths(REPO, CACHE, CACHE / f"test-out-{n}")
        t0 = time.monotonic()
        outs.append(build(REPO, paths, ImageConfig(), signer, Progress(), commit=commit))
        times.append(time.monotonic() - t0)
    print(f"\nbuild times: first {times[0]:.1f}s, second (cached) {times[1]:.1f}s")
    return Built(outs[0], outs[1], times[0], times[1], paths)


def test_two_builds_of_the_same_commit_are_bit_identical(built: Built) -> None:
    a, b = built.first.disk.parent, built.second.disk.parent
    for name in ("root.img", "root.verity", "vmlinuz", "initrd.img", "disk.img", "manifest.json"):
        assert sha256(a / name) == sha256(b / name), f"{name} differs between two builds"
    assert (a / "manifest.sig").read_bytes() == (
        b / "manifest.sig"
    ).read_bytes()  # Ed25519 is deterministic
    m = built.first.manifest
    print(
        f"\nroot.img {m.artifacts['root.img'].size / 2**20:.1f} MiB, "
        f"disk.img {m.artifacts['disk.img'].size / 2**20:.1f} MiB, "
        f"bundle {built.first.bundle.stat().st_size / 2**20:.1f} MiB, {len(m.packages)} packages"
    )


def test_manifest_records_the_package_list_and_verity(built: Built) -> None:
    m = built.first.manifest
    for pkg in ("systemd", "udev", "python3", "softhsm2", "opensc"):
        assert pkg in m.packages
    assert any(p.startswith("linux-image-") for p in m.packages)
    assert m.verity.data_blocks * 4096 == m.artifacts["root.img"].size


def test_image_unit_passes_the_gate_with_the_images_own_systemd(built: Built) -> None:
    rootdir = built.paths.work / "rootfs"
    proc = subprocess.run(
        [
            "chroot",
            str(rootdir),
            "systemd-analyze",
            "security",
            "--offline=true",
            "--threshold=20",
            "--no-pager",
            "kmsnode.service",
        ],
        capture_output=True,
        text=True,
    )
    m = re.search(
        r"Overall exposure level for kmsnode\.service: (\d+\.\d+)", proc.stdout + proc.stderr
    )
    assert m is not None, proc.stderr[-500:]
    print(f"\nexposure with the image's systemd: {m.group(1)}")
    assert float(m.group(1)) <= 2.0 and proc.returncode == 0


@contextlib.contextmanager
def guest(built: Built, tmp: Path, corrupt_at: int | None = None) -> Iterator[boot.Guest]:
    out = built.first.disk.parent
    g = boot.start(
        out / "disk.img",
        out / "vmlinuz",
        out / "initrd.img",
        built.first.manifest,
        tmp,
        timeout=BOOT_TIMEOUT,
        corrupt_at=corrupt_at,
    )
    try:
        yield g
    finally:
        g.stop()


def health(port: int, ca_pem: bytes) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    opts = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=opts) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def console_ca(console: str) -> bytes | None:
    """The CA certificate the first-boot script prints between markers (journal prefixes cut)."""
    m = re.search(r"KMSNODE-CA-BEGIN(.*?)KMSNODE-CA-END", console, re.S)
    if not m:
        return None
    lines = [line.split("]: ")[-1].strip() for line in m.group(1).replace("\r", "").splitlines()]
    pem = "\n".join(x for x in lines if x) + "\n"
    return pem.encode() if "-----END CERTIFICATE-----" in pem else None


def wait_serving(g: boot.Guest, deadline: float) -> tuple[str, float]:
    last = "no answer"
    while time.monotonic() < deadline and g.proc.poll() is None:
        out = g.output()
        ca = console_ca(out)
        if ca:
            try:
                last = health(g.ue_port, ca)
                if last == "SERVING":
                    return last, time.monotonic() - g.started
            except Exception as exc:  # grpc.RpcError and TLS errors while the node starts
                last = type(exc).__name__
        time.sleep(2)
    return last, time.monotonic() - g.started


def test_boots_the_verity_root_and_the_service_answers_serving(
    built: Built, tmp_path: Path
) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86 not installed")
    with guest(built, tmp_path) as g:
        status, seconds = wait_serving(g, time.monotonic() + BOOT_TIMEOUT - 20)
        out = g.output()
        (CACHE / "last-boot-console.log").write_text(out)
        assert "kmsnode-initrd: slot a verity root" in out, out[-3000:]
        assert status == "SERVING", f"health: {status}; console tail:\n{out[-4000:]}"
        print(f"\nboot to SERVING: {seconds:.1f}s")


def _file_offset_in_root(built: Built, tmp: Path, inner: str) -> int:
    """Byte offset inside root.img of the first data block of `inner` (FIEMAP on a loop mount)."""
    mnt = tmp / "mnt"
    mnt.mkdir()
    root = built.first.disk.parent / "root.img"
    if subprocess.run(
        ["mount", "-t", "erofs", "-o", "loop,ro", str(root), str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("cannot loop-mount erofs on this host")
    try:
        fr = subprocess.run(
            ["filefrag", "-e", "-b4096", str(mnt / inner)],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    m = re.search(r"^\s*0:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.", fr.stdout, re.M)
    assert m, fr.stdout
    return int(m.group(1)) * 4096


def test_one_changed_byte_in_the_root_keeps_the_service_down(built: Built, tmp_path: Path) -> None:
    if shutil.which("qemu-io") is None or shutil.which("filefrag") is None:
        pytest.skip("qemu-utils / e2fsprogs (filefrag) not installed")
    # The source, not the .pyc: Python falls back to the source when a .pyc read fails, but the
    # checked-hash .pyc (SOURCE_DATE_EPOCH) makes it read the source on every import.
    inner = "opt/kmsnode/lib/python3.13/site-packages/firmware/cli.py"
    offset = _file_offset_in_root(built, tmp_path, inner)
    disk_offset = gpt.read_layout(str(built.first.disk))["root-a"].offset + offset + 100
    with guest(built, tmp_path, corrupt_at=disk_offset) as g:
        seen = g.wait_for(
            "Failed to start kmsnode", "Dependency failed for kmsnode", timeout=BOOT_TIMEOUT - 20
        )
        out = g.output()
        (CACHE / "last-corrupt-console.log").write_text(out)
        status, _ = wait_serving(g, time.monotonic() + 20)
    assert seen is not None, out[-3000:]
    assert re.search(r"verity.*(corrupt|mismatch)", out, re.I), (
        "no dm-verity read error on the console"
    )
    assert status != "SERVING"
    print("\ncorrupted root: dm-verity read errors, kmsnode did not come up (as intended)")
