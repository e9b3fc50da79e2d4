"""A real full disk for tests: a small tmpfs mounted for the duration of a with-block.

    with SmallDisk(tmp_path / "disk", size=64 * 1024) as disk:
        log = AuditLog(disk.path / "audit.log", mac)   # or a node whose audit_log is there
        disk.fill()        # no free page left: the next write fails (or is cut short)
        ...
        disk.free()        # the filler is gone: writes succeed again

Rules:
- Needs root (mount(2)); CI and these machines run the suite as root. Without root it fails
  loudly and never skips: a skipped durability test proves nothing.
- tmpfs counts whole pages (`PAGE` bytes): a file's last page has room up to the page's end,
  so a write that crosses into a page the disk does not have is cut short (a short write), and
  the next one fails with ENOSPC. `fill(leave_pages=n)` leaves exactly n free pages.
- The tmpfs is unmounted on exit, lazily when something on it is still open (a test that
  failed half way), so a failing test never leaves a mount behind.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

PAGE = os.sysconf("SC_PAGE_SIZE")


class SmallDisk:
    """A tmpfs of `size` bytes (rounded up to pages) mounted at `path` (created if missing)."""

    def __init__(self, path: Path, size: int = 64 * 1024) -> None:
        self.path = Path(path)
        self.size = size
        self.filler = self.path / ".filler"

    def __enter__(self) -> SmallDisk:
        if os.geteuid() != 0:
            raise RuntimeError("SmallDisk mounts a tmpfs: run the tests as root (CI does)")
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0700", "tmpfs", str(self.path)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        done = subprocess.run(["umount", str(self.path)], capture_output=True, timeout=30)
        if done.returncode != 0:  # still in use: detach now, freed once the last file closes
            subprocess.run(["umount", "-l", str(self.path)], check=True, timeout=30)

    @property
    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave_pages: int = 0) -> None:
        """Take every free page but `leave_pages` with a filler file."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            chunk = bytes(PAGE)
            while True:
                try:
                    if os.write(fd, chunk) < len(chunk):
                        break
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
            size = os.fstat(fd).st_size
            os.ftruncate(fd, max(0, size - size % PAGE - leave_pages * PAGE))
        finally:
            os.close(fd)
        assert self.free_bytes == leave_pages * PAGE, (self.free_bytes, leave_pages)

    def free(self) -> None:
        """Give the filler's pages back."""
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 64 KiB tmpfs at tmp_path/disk (import this fixture into a conftest to use it)."""
    with SmallDisk(tmp_path / "disk") as disk:
        yield disk
