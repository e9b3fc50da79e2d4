"""Write targets: block devices or regular image files.

Rules:
- A target that is mounted - the device, one of its partitions, or a file backing a mounted loop
  device - is refused before anything is written.
- Capacity: a block device's size; an existing regular file's size (a pre-sized "disk" file); a
  missing or empty file is created and may grow.
- Copies go through `copy_extent`, which calls an optional `hook(name, done)` after every chunk:
  production passes None; tests use it to inject a crash mid-write.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

from image.errors import TargetRefused, WriteFailed
from image.gpt import Partition
from image.verify import CHUNK, Extent

WriteHook = Callable[[str, int], None]
BLKGETSIZE64 = 0x80081272


def _mounted_devices() -> set[tuple[int, int]]:
    devs: set[tuple[int, int]] = set()
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return devs
    for line in lines:
        major, minor = line.split()[2].split(":")
        devs.add((int(major), int(minor)))
    return devs


def _block_family(rdev: int) -> set[tuple[int, int]]:
    """The device and its partitions (from sysfs)."""
    major, minor = os.major(rdev), os.minor(rdev)
    fam = {(major, minor)}
    sys_dir = Path(f"/sys/dev/block/{major}:{minor}")
    try:
        for child in sys_dir.resolve().iterdir():
            dev_file = child / "dev"
            if (child / "partition").exists() and dev_file.exists():
                ma, mi = dev_file.read_text().strip().split(":")
                fam.add((int(ma), int(mi)))
    except OSError:
        pass
    return fam


def _loop_devices_backing(path: Path) -> list[str]:
    found = []
    real = str(path.resolve())
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip() == real:
                found.append(backing.parent.parent.name)
        except OSError:
            continue
    return found


def check_not_mounted(target: str) -> None:
    p = Path(target)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return
    mounted = _mounted_devices()
    if stat.S_ISBLK(st.st_mode):
        if _block_family(st.st_rdev) & mounted:
            raise TargetRefused(f"{target} (or one of its partitions) is mounted; unmount it first")
        return
    if not stat.S_ISREG(st.st_mode):
        raise TargetRefused(f"{target} is neither a block device nor a regular file")
    for loop in _loop_devices_backing(p):
        ma, mi = Path(f"/sys/block/{loop}/dev").read_text().strip().split(":")
        fam = _block_family(os.makedev(int(ma), int(mi)))
        if fam & mounted:
            raise TargetRefused(f"{target} is mounted through /dev/{loop}; unmount it first")


def capacity(target: str) -> int | None:
    """Bytes available on the target, or None if it is a file that may grow."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return None
    if stat.S_ISBLK(st.st_mode):
        fd = os.open(target, os.O_RDONLY)
        try:
            buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\x00" * 8)
        finally:
            os.close(fd)
        return int(struct.unpack("<Q", buf)[0])
    return st.st_size or None


def copy_extent(
    src: Extent, size: int, dst_fd: int, dst_offset: int, name: str, hook: WriteHook | None
) -> None:
    with open(src.path, "rb") as f:
        f.seek(src.offset)
        done = 0
        while done < size:
            chunk = f.read(min(CHUNK, size - done))
            if not chunk:
                raise WriteFailed(f"{src.path}: source ended after {done} of {size} bytes")
            os.pwrite(dst_fd, chunk, dst_offset + done)
            done += len(chunk)
            if hook is not None:
                hook(name, done)
    os.fsync(dst_fd)


def drop_cache(fd: int) -> None:
    """Make the read-back come from the medium, not the page cache (best effort)."""
    os.fsync(fd)
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _partition_devices(rdev: int) -> dict[int, tuple[int, int, Path]]:
    """Partitions of a disk by byte offset: (major, minor, sysfs folder)."""
    out: dict[int, tuple[int, int, Path]] = {}
    sys_dir = Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")
    try:
        for child in sys_dir.resolve().iterdir():
            if (child / "partition").exists():
                ma, mi = (child / "dev").read_text().strip().split(":")
                out[int((child / "start").read_text()) * 512] = (int(ma), int(mi), child)
    except OSError:
        pass
    return out


def check_slot_free(target: str, parts: list[Partition]) -> None:
    """Refuse when a partition about to be written is mounted or held (dm-verity, another map).

    A disk file is refused when it backs a mounted loop device; on a block device only the slot's
    own partitions must be free (the running slot's partitions on the same disk are in use).
    """
    try:
        st = os.stat(target)
    except FileNotFoundError:
        raise TargetRefused(f"{target} does not exist") from None
    if not stat.S_ISBLK(st.st_mode):
        check_not_mounted(target)
        return
    mounted = _mounted_devices()
    devices = _partition_devices(st.st_rdev)
    for part in parts:
        dev = devices.get(part.offset)
        if dev is None:
            continue
        holders = list((dev[2] / "holders").iterdir()) if (dev[2] / "holders").exists() else []
        if (dev[0], dev[1]) in mounted or holders:
            raise TargetRefused(
                f"partition {part.label} of {target} is in use; refusing to write it"
            )


def boot_disk(partlabel: str = "bootstate") -> str:
    """The whole disk that holds this system's `bootstate` partition (on the appliance)."""
    link = Path("/dev/disk/by-partlabel") / partlabel
    try:
        part = link.resolve(strict=True)
        parent = (Path("/sys/class/block") / part.name).resolve().parent
    except OSError:
        raise TargetRefused(f"no {link}: not running from a kmsnode disk") from None
    disk = Path("/dev") / parent.name
    if not disk.exists():
        raise TargetRefused(f"{part} has no parent disk")
    return str(disk)
