"""The file medium of the audit log (the embedded default): one log file, its signed head file
`<log>.head` beside it, the chain's head also counted in the state store (`HeadStore`).

Rules (the medium protocol's, firmware/audit/medium.py, for a file):
- A commit: write the batch (a short write is a failure), fsync, write the next head beside the
  head file, count it in the state store (the point of no return), then rename the head into
  place. Any failure before the store has counted the batch fails the whole batch; the file is
  cut back to its last committed size at once.
- One fsync per commit (the log's): the records are durable before their appends return. The
  heads (head file, state store's head) are written by every commit, so every reader sees them
  current, but made durable (head file fsynced, the store's head committed with its full sync)
  only by the first commit after `heads_sync_interval` seconds since they last were, and at
  close. A power cut can so leave both heads behind the log by the records of the last
  interval, never ahead of it (they are written after the log's fsync); the start brings heads
  older than the log forward (recovery.py). Concurrent releases are committed as one batch, so
  a group of them costs one fsync.
- After a failure, `restore` first cuts the file back to the known size again (and, when the
  store's answer to the failed batch was lost, asks the store: if it did count that batch, the
  batch's exact bytes are written back, as after a crash between the fsync and the answer; a
  store head ahead of both keeps every commit refused).
- A head file that cannot be replaced after the store counted the batch does not undo it: it
  stays one commit behind, and the next commit or start replaces it.
- At `begin`, a torn last line (never acknowledged: a record is acknowledged only once its
  newline is durable) is cut off.
- The writer lock is an flock on `<log>.lock` (files.py).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from firmware.audit.chain import Mac, split
from firmware.audit.files import (
    discard_head,
    head_path,
    lock,
    prepare_head,
    publish_head,
    read_optional,
    write_all,
    write_head,
)
from firmware.audit.medium import Batch, Stored
from firmware.audit.verify import AuditReport, ChainResult, Snapshot, verify
from firmware.core.errors import AuditUnavailable, KmsError
from firmware.core.ports import HeadStore

log = logging.getLogger("kmsnode.audit")

HINT = "run `kmsnode audit accept-gap --config FILE` after investigating"
HEADS_SYNC_INTERVAL = 1.0  # seconds a power cut may leave the heads behind the log (rules)


def why(exc: BaseException) -> str:
    """The cause of a failed write, for operators: never record content."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror} ({errno.errorcode.get(exc.errno, exc.errno)})"
    if isinstance(exc, KmsError):
        return f"{exc.reason}: {exc}"
    return type(exc).__name__


def read_log(path: Path) -> bytes | None:
    try:
        return read_optional(path)
    except OSError as exc:
        raise AuditUnavailable(f"cannot read the audit log {path}: {exc.strerror}") from None


def _keep_aside(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class FileMedium:
    """One log file and its head file; `heads`: the state store's head of the chain."""

    chain = ""
    hint = HINT

    def __init__(
        self,
        path: Path,
        heads: HeadStore | None = None,
        heads_sync_interval: float = HEADS_SYNC_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._interval, self._clock = heads_sync_interval, clock
        self._heads_synced = -math.inf  # when the heads were last made durable
        self.head_path = head_path(self.path)
        self.where = f"the audit log {self.path}"
        self.head_where = f"the signed head {self.head_path}"
        self._heads = heads
        self._lock = self._fd = -1
        self._size = 0  # bytes of the committed records
        self._seq = 0  # seq of the last committed record
        self._dirty = False  # the file may hold more than the committed size until cut back
        self._unconfirmed: Batch | None = None  # the batch whose store commit raised
        self._last_head: Batch | None = None  # the last commit's, until its heads are durable

    def lock(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = lock(self.path)

    def read(self) -> Stored:
        # The store's head first: a running writer only adds records after it.
        kept = self._heads.audit_head() if self._heads is not None else None
        data = read_log(self.path)
        lines, torn = split(data or b"")
        try:
            head = read_optional(self.head_path)
        except OSError:
            head = b""  # there but unreadable: it does not verify
        return Stored(lines, None, torn, data is not None, head, kept)

    def begin(self, stored: Stored, seq: int, mac: bytes) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size, self._seq = sum(len(line) + 1 for line in stored.lines), seq
        if stored.torn:
            os.ftruncate(self._fd, self._size)
            os.fsync(self._fd)

    def restore(self) -> Batch | None:
        if not self._dirty:
            return None
        os.ftruncate(self._fd, self._size)
        os.fsync(self._fd)
        adopted = None
        if self._unconfirmed is not None and self._heads is not None:
            batch = self._unconfirmed
            kept = self._heads.audit_head()
            if kept is not None and kept[0] > self._seq:
                if kept != (batch.last, batch.mac):
                    raise AuditUnavailable("the state store's audit head is ahead of this log")
                # The store did count the batch whose answer was lost: its records are committed.
                self._write(batch)
                adopted = batch
        self._unconfirmed = None
        self._dirty = False
        return adopted

    def _write(self, batch: Batch) -> None:
        data = b"".join(batch.lines)
        write_all(self._fd, data)
        os.fsync(self._fd)
        self._size += len(data)
        self._seq = batch.last

    def commit(self, batch: Batch) -> None:
        data = b"".join(batch.lines)
        now = self._clock()
        durable = now - self._heads_synced >= self._interval
        try:
            write_all(self._fd, data)
            os.fsync(self._fd)
            prepare_head(self.path, batch.head, durable=durable)
            if self._heads is not None:
                self._unconfirmed = batch
                self._heads.set_audit_head(batch.last, batch.mac, durable=durable)
                self._unconfirmed = None
        except Exception:
            self._dirty = True
            # now, so no torn record waits for the next commit (which cuts it back first anyway)
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            discard_head(self.path)
            raise
        # Committed: the records are durable and the store counts them.
        self._size += len(data)
        self._seq = batch.last
        self._last_head = batch
        try:
            publish_head(self.path)
        except OSError as exc:
            log.error("audit head file not replaced: %s", why(exc))
            return
        if durable:
            self._heads_synced, self._last_head = now, None

    def _sync_heads(self) -> None:
        """At close: the last commit's heads made durable, if they are not yet."""
        batch, self._last_head = self._last_head, None
        if batch is None:
            return
        try:
            write_head(self.path, batch.head)
            if self._heads is not None:
                self._heads.set_audit_head(batch.last, batch.mac)
        except (OSError, KmsError) as exc:
            log.error("audit heads not made durable at close: %s", why(exc))

    def snapshot(self, seq: int, mac: bytes) -> Snapshot:
        """The file as of the last commit (call between two commits)."""
        try:
            head = self.head_path.read_bytes()
        except OSError:
            head = b""
        return Snapshot(self._size, head, seq, mac)

    def verifier(self, seq: int, mac: bytes) -> Callable[[Mac], AuditReport]:
        snapshot = self.snapshot(seq, mac)
        return lambda key: AuditReport((ChainResult.of("", verify(self.path, key, snapshot)),))

    def rewrite(self, keep: int, gap: Batch, head_rejected: bool) -> None:
        data = read_log(self.path) or b""
        lines, _ = split(data)
        good = sum(len(line) + 1 for line in lines[:keep])
        aside = self.path.with_name(f"{self.path.name}.rejected-{gap.first}")
        if good < len(data):
            _keep_aside(aside, data[good:])
        if head_rejected:
            old = read_optional(self.head_path)
            _keep_aside(
                self.head_path.with_name(f"{self.head_path.name}.rejected-{gap.first}"), old or b""
            )
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, good)
            os.lseek(fd, good, os.SEEK_SET)
            write_all(fd, b"".join(gap.lines))
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._heads is not None:
            # above every head found: never lowers the stored one
            self._heads.set_audit_head(gap.last, gap.mac)
        write_head(self.path, gap.head)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the log (if it was missing), the head and the kept files
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        if self._fd >= 0:
            self._sync_heads()
        for fd in (self._fd, self._lock):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock = -1
