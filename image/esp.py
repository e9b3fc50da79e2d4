"""The EFI system partition: systemd-boot, loader.conf and one signed UKI per installed slot.

Rules and invariants:
- Entries are Boot Loader Specification type #2 files `EFI/Linux/kmsnode-<seq>-<slot>[+L[-D]].efi`
  where `seq` is the boot-state sequence number at install (8 digits). The UKIs carry no version
  in their `.osrel`, so systemd-boot orders them by file name, newest install first; an entry whose
  tries are used up (`+0`) sorts last. That is the automatic fallback: after its tries a pending
  slot's entry is passed over and the previous (blessed) entry boots.
- `+L` is the boot counter (systemd-boot decrements it on every try, systemd-bless-boot drops it
  after boot-complete.target); a freshly installed slot gets `+tries`, the factory slot none.
- At most one entry per slot: installing a slot removes that slot's old entries first, so a
  half-written slot is never bootable (the UKI is installed only after the slot verified).
- Two backends with one interface: `MtoolsEsp` edits the FAT inside a disk file or an unmounted
  device at an offset (no kernel VFAT needed: the build host has none); `DirEsp` works on a
  mounted ESP (on the appliance, /efi), so the kernel's FAT cache is never bypassed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from image.errors import BuildError, TargetRefused

LINUX_DIR = "EFI/Linux"
ENTRY = re.compile(r"^kmsnode-(\d{8})-([ab])(?:\+(\d+)(?:-(\d+))?)?\.efi$")
DEFAULT_TRIES = 3

LOADER_CONF = """\
# kmsnode: boot the newest UKI at once. No menu (a key press cannot show one), no command-line
# editor (under Secure Boot the stub ignores a command line from the loader anyway), no
# auto-added firmware or shell entries.
timeout menu-disabled
editor no
auto-entries no
auto-firmware no
auto-reboot no
auto-poweroff no
reboot-for-bitlocker no
secure-boot-enroll off
"""


@dataclass(frozen=True)
class Entry:
    name: str
    seq: int
    slot: str
    tries_left: int | None
    tries_done: int

    @property
    def bad(self) -> bool:
        return self.tries_left == 0


def parse_entry(name: str) -> Entry | None:
    m = ENTRY.match(name)
    if m is None:
        return None
    left = int(m.group(3)) if m.group(3) is not None else None
    return Entry(name, int(m.group(1)), m.group(2), left, int(m.group(4) or 0))


def entry_name(seq: int, slot: str, tries: int | None) -> str:
    counter = f"+{tries}" if tries is not None else ""
    return f"kmsnode-{seq:08d}-{slot}{counter}.efi"


class Esp(Protocol):
    def list(self, directory: str) -> list[str]: ...

    def put(self, src: Path, dest: str) -> None: ...

    def read(self, path: str) -> bytes: ...

    def delete(self, path: str) -> None: ...

    def rename(self, old: str, new_name: str) -> None: ...


def entries(esp: Esp) -> list[Entry]:
    """The kmsnode entries, newest install first (the boot loader's order, bad ones last)."""
    found = [e for n in esp.list(LINUX_DIR) if (e := parse_entry(n)) is not None]
    return sorted(found, key=lambda e: (e.bad, -e.seq))


def remove_slot(esp: Esp, slot: str) -> None:
    for e in entries(esp):
        if e.slot == slot:
            esp.delete(f"{LINUX_DIR}/{e.name}")


def install_uki(esp: Esp, uki: Path, slot: str, seq: int, tries: int | None) -> str:
    """Replace the slot's entry by `uki` under a temporary name, then rename it into place."""
    remove_slot(esp, slot)
    final = entry_name(seq, slot, tries)
    tmp = f"{LINUX_DIR}/{final}.new"
    esp.put(uki, tmp)
    esp.rename(tmp, final)
    return final


def default_slot(esp: Esp) -> str | None:
    """The slot systemd-boot boots next: the first entry in its order that is not bad."""
    for e in entries(esp):
        if not e.bad:
            return e.slot
    return None


class MtoolsEsp:
    """The FAT filesystem at `offset` bytes in `image` (a disk file or an unmounted device)."""

    def __init__(self, image: str, offset: int) -> None:
        if shutil.which("mcopy") is None:
            raise TargetRefused("mtools not installed (apt-get install mtools)")
        self.spec = f"{image}@@{offset}"

    def _run(self, *args: str) -> str:
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0", "TZ": "UTC"}
        proc = subprocess.run(
            [args[0], "-i", self.spec, *args[1:]], capture_output=True, text=True, env=env
        )
        if proc.returncode != 0:
            raise TargetRefused(f"ESP: {args[0]} failed: {proc.stderr.strip()[-300:]}")
        return proc.stdout

    def list(self, directory: str) -> list[str]:
        out = self._run("mdir", "-b", f"::/{directory}")
        return sorted(line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line)

    def put(self, src: Path, dest: str) -> None:
        self._run("mcopy", "-o", "-m", str(src), f"::/{dest}")

    def copy_tree(self, dirs: Sequence[Path]) -> None:
        self._run("mcopy", "-s", "-m", *(str(d) for d in dirs), "::/")

    def read(self, path: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="kmsnode-esp-") as tmp:
            out = Path(tmp) / "f"
            self._run("mcopy", "-n", f"::/{path}", str(out))
            return out.read_bytes()

    def delete(self, path: str) -> None:
        self._run("mdel", f"::/{path}")

    def rename(self, old: str, new_name: str) -> None:
        self._run("mren", f"::/{old}", new_name)


class DirEsp:
    """A mounted ESP (the appliance's /efi)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def list(self, directory: str) -> list[str]:
        try:
            return sorted(os.listdir(self.root / directory))
        except FileNotFoundError:
            return []

    def put(self, src: Path, dest: str) -> None:
        path = self.root / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def delete(self, path: str) -> None:
        (self.root / path).unlink(missing_ok=True)

    def rename(self, old: str, new_name: str) -> None:
        src = self.root / old
        os.replace(src, src.parent / new_name)
        fd = os.open(src.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def make_esp_image(
    path: Path, size: int, boot_loader: Path, entries_: dict[str, Path], epoch: int
) -> None:
    """A FAT32 ESP: systemd-boot as the removable-media loader, loader.conf and the entries.

    Reproducible: `mkfs.vfat --invariant` with a fixed volume id, mtools copies with the sources'
    mtimes (clamped to `epoch` here) and TZ=UTC.
    """
    for tool in ("mkfs.vfat", "mcopy"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} not installed (apt-get install dosfstools mtools)")
    path.unlink(missing_ok=True)
    fat32 = ["-F", "32"] if size >= 64 << 20 else []  # small test ESPs: let mkfs choose
    subprocess.run(
        [
            "mkfs.vfat",
            "--invariant",
            *fat32,
            *("-i", "4b4d5331", "-n", "KMSNODE-ESP", "-C", str(path), str(size // 1024)),
        ],
        check=True,
        capture_output=True,
    )
    with tempfile.TemporaryDirectory(prefix="kmsnode-esp-") as tmp:
        t = Path(tmp)
        staged = {"EFI/BOOT/BOOTX64.EFI": boot_loader}
        staged.update({f"{LINUX_DIR}/{name}": src for name, src in entries_.items()})
        for dest, src in staged.items():
            (t / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, t / dest)
        (t / "loader").mkdir()
        (t / "loader/loader.conf").write_text(LOADER_CONF)
        # mcopy -s -m keeps the staged tree's mtimes for files *and* directories (mmd would
        # stamp directories with the current time).
        for p in [t, *t.rglob("*")]:
            os.utime(p, (epoch, epoch))
        MtoolsEsp(str(path), 0).copy_tree([t / "EFI", t / "loader"])
