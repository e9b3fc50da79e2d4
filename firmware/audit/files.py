"""The audit log's file operations: whole writes, the signed head's atomic replacement, the lock.

Rules:
- `write_all` writes every byte or raises: a short write (a disk that filled up part way) is a
  failure like ENOSPC, never a record; the caller cuts the file back to its committed size.
- The head file is replaced in two steps so a commit can put its point of no return (the state
  store's head) between them: `prepare_head` writes (and, when asked, fsyncs) `<log>.head.tmp`
  (this is where a full disk fails, while nothing can be undone yet), `publish_head` renames it
  over `<log>.head` (a rename allocates no space). A head written without fsync is still
  replaced whole: ext4 (the appliance's state partition, data=ordered with auto_da_alloc, its
  defaults) writes a file's data before a rename over an existing file is committed, so a crash
  leaves the old head or the new one.
- One writer per log: whoever writes it (the node's AuditLog, `kmsnode audit accept-gap`) holds
  an exclusive flock on `<log>.lock` (never deleted, so a deleted log cannot dodge it). The kernel
  drops the lock when the process dies, so a crashed node never blocks the operator.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from firmware.core.errors import AuditUnavailable


def write_all(fd: int, data: bytes) -> None:
    """Write `data` in one call; a short write (the disk filled up part way) is a failure."""
    if os.write(fd, data) != len(data):
        raise OSError(errno.ENOSPC, "short write")


def head_path(log: Path) -> Path:
    return log.with_name(log.name + ".head")


def _tmp(log: Path) -> Path:
    return log.with_name(log.name + ".head.tmp")


def prepare_head(log: Path, content: bytes, durable: bool = True) -> None:
    """Write the next head beside the current one (fsynced when `durable`); `publish_head` makes
    it current. Not durable: a crash may leave the previous head (module rules)."""
    tmp = _tmp(log)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, content + b"\n")
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def publish_head(log: Path) -> None:
    os.replace(_tmp(log), head_path(log))


def discard_head(log: Path) -> None:
    """Drop a prepared head that will not be published (best effort: it is never read)."""
    with contextlib.suppress(OSError):
        _tmp(log).unlink(missing_ok=True)


def write_head(log: Path, content: bytes) -> None:
    prepare_head(log, content)
    publish_head(log)


def read_optional(path: Path) -> bytes | None:
    """The file's content, or None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def lock(log: Path) -> int:
    """Take the log's writer lock; returns its fd (closing it releases the lock)."""
    fd = os.open(log.with_name(log.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AuditUnavailable(
            f"the audit log {log} is in use by another process (a running node?)"
        ) from None
    except OSError:
        os.close(fd)
        raise
    return fd
