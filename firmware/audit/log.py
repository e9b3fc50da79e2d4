"""Append-only, hash-chained audit log keyed by the HSM audit key: the writer.

The format (records, chain, gaps, signed head `<log>.head`) is in firmware/audit/chain.py, the
start rules and `accept-gap` in firmware/audit/recovery.py, verification in
firmware/audit/verify.py (`verify`, `VerifyResult`, `Snapshot` are re-exported here).

Rules:
- `append` returns only once its record is durable; concurrent appends are committed together
  by one writer thread (group commit). A commit: write the batch (a short write is a failure),
  fsync, write and fsync the next head beside the
  head file, count it in the state store (`HeadStore`, the point of no return), then rename the
  head into place. Any failure before the store has counted the batch fails the whole batch:
  `append` raises AuditUnavailable for each of its records and the caller must refuse what it
  was about to do; the file is cut back to its last committed size at once.
- Fail closed, but stay up: the log never closes itself after a failure. The next commit first
  cuts the file back to the known size again (and, when the store's answer to the failed batch
  was lost, asks the store: if it did count that batch, the batch's exact bytes are written
  back, as after a crash between the fsync and the answer). The log serves again as soon as
  writes succeed.
- `on_availability(False, reason)` is called once on the first failure, `(True, "")` once on
  the first commit after it, on the writer thread, before the callers of that batch are
  answered (so the node's alarm comes before the refusal). The reason names the cause (errno
  text, error class), never record content. It must not call `append` (it would wait for the
  thread that runs it): such an append is refused.
- A stored head is never lowered: every commit names a seq above the last one, and at start
  the store's head is at most the log's last seq (else the start is refused).
- Start (construction): the log is inspected (recovery.py); a refused start raises
  AuditIntegrityError and changes nothing. Else a torn last line is cut and recorded as
  AUDIT_RECOVERED {"torn_bytes": n}, and a NODE_STARTED record {"previous_start": seq of the
  previous NODE_STARTED or 0, "accepted_gaps": n} is committed (which also brings both heads up
  to the log). `start_findings` tells the node what it found: the bytes cut, and the gaps
  accepted since the last start (AUDIT_GAP records after the previous NODE_STARTED record).
- One writer per log file: the writer lock (files.py) is held from construction to `close`.
- Records never hold key material: callers pass only identities, reasons, ids and counts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time as time_mod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware.audit.chain import GENESIS, START_EVENT, Gap, Mac, head_bytes, make_record
from firmware.audit.files import (
    discard_head,
    head_path,
    lock,
    prepare_head,
    publish_head,
    write_all,
)
from firmware.audit.recovery import inspect
from firmware.audit.verify import Snapshot, VerifyResult, verify
from firmware.core.errors import AuditUnavailable, KmsError
from firmware.core.ports import HeadStore

__all__ = ["GENESIS", "AuditLog", "Gap", "Snapshot", "StartFindings", "VerifyResult", "verify"]

log = logging.getLogger("kmsnode.audit")

RECOVERED_EVENT = "AUDIT_RECOVERED"

Availability = Callable[[bool, str], None]


@dataclass(frozen=True)
class StartFindings:
    """What the start found: bytes of a torn last line it cut (0: none), and the gaps an
    operator accepted since the previous start (the node raises TAMPER for them)."""

    torn_bytes: int
    accepted_gaps: tuple[Gap, ...]


class _Pending:
    __slots__ = ("done", "error", "event", "fields", "seq", "time")

    def __init__(self, time: float, event: str, fields: Mapping[str, Any]) -> None:
        self.time, self.event, self.fields = time, event, dict(fields)
        self.done = threading.Event()
        self.error = ""
        self.seq = 0


def _why(exc: BaseException) -> str:
    """The cause of a failed commit, for operators: never record content."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror} ({errno.errorcode.get(exc.errno, exc.errno)})"
    if isinstance(exc, KmsError):
        return f"{exc.reason}: {exc}"
    return type(exc).__name__


class AuditLog:
    """The writer side. One instance per log file (the writer lock enforces it)."""

    def __init__(
        self,
        path: Path,
        mac: Mac,
        counted: Callable[[int], None] | None = None,
        head_store: HeadStore | None = None,
        on_availability: Availability | None = None,
        clock: Callable[[], float] = time_mod.time,
    ) -> None:
        self.path = Path(path)
        self.head_path = head_path(self.path)
        self._mac, self._counted, self._head_store = mac, counted, head_store
        self._on_availability = on_availability
        self._queue: list[_Pending] = []
        self._cv = threading.Condition()
        self._commit_lock = threading.Lock()  # a commit vs. a snapshot
        self._closed = False
        self._writer: threading.Thread | None = None
        # after a failure: the file may hold more than the committed size until cut back
        self._dirty = False
        # the batch whose store commit raised: (seq, mac, bytes), in case the store did count it
        self._unconfirmed: tuple[int, bytes, bytes] | None = None
        self._available = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = lock(self.path)
        self._fd = -1
        try:
            self.start_findings = self._start(clock())
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
            os.close(self._lock)
            raise
        self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._writer.start()

    # --- start ------------------------------------------------------------------------------

    def _start(self, now: float) -> StartFindings:
        kept = self._head_store.audit_head() if self._head_store is not None else None
        found = inspect(self.path, self._mac, kept)
        if found.problem:
            raise found.error()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if found.torn:
            # never acknowledged (a record is acknowledged only once its newline is durable)
            os.ftruncate(self._fd, found.size)
            os.fsync(self._fd)
        s = found.scan
        self._seq, self._last, self._size, self._records = s.seq, s.mac, found.size, s.lines
        gaps = s.gaps_since_start
        batch = [_Pending(now, RECOVERED_EVENT, {"torn_bytes": found.torn})] if found.torn else []
        batch.append(
            _Pending(now, START_EVENT, {"previous_start": s.last_start, "accepted_gaps": len(gaps)})
        )
        with self._commit_lock:
            self._commit_locked(batch, notify=False)
        if batch[-1].error:
            raise AuditUnavailable(f"the audit log cannot be written at start: {batch[-1].error}")
        return StartFindings(found.torn, gaps)

    @property
    def count(self) -> int:
        """Records in the log (lines); equals `seq` unless an accepted gap is in the log."""
        return self._records

    @property
    def seq(self) -> int:
        """Seq of the last durable record (what the heads name)."""
        return self._seq

    @property
    def available(self) -> bool:
        """False from a failed commit until the next one succeeds."""
        return self._available

    def snapshot(self) -> Snapshot:
        """The log as of the last commit, for `verify` while the node keeps writing."""
        with self._commit_lock:
            try:
                head = self.head_path.read_bytes()
            except OSError:
                head = b""
            return Snapshot(self._size, head, self._seq, self._last)

    # --- writing ----------------------------------------------------------------------------

    def append(self, time: float, event: str, fields: Mapping[str, Any]) -> int:
        """Write one record durably; returns its sequence number. Raises AuditUnavailable."""
        if threading.current_thread() is self._writer:
            raise AuditUnavailable("append from the audit writer itself (on_availability)")
        pending = _Pending(time, event, fields)
        with self._cv:
            if self._closed:
                raise AuditUnavailable("audit log is closed")
            self._queue.append(pending)
            self._cv.notify()
        pending.done.wait()
        if pending.error:
            raise AuditUnavailable(f"audit record not written: {pending.error}")
        return pending.seq

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                batch, self._queue = self._queue, []
                if not batch and self._closed:
                    return
            with self._commit_lock:
                self._commit_locked(batch)

    def _commit_locked(self, batch: list[_Pending], notify: bool = True) -> None:
        try:
            if self._dirty:
                self._restore()
            seq, last, lines = self._seq, self._last, []
            for item in batch:
                seq += 1
                line, last = make_record(seq, item.time, item.event, item.fields, last, self._mac)
                lines.append(line)
            data = b"".join(lines)
            write_all(self._fd, data)
            os.fsync(self._fd)
            prepare_head(self.path, head_bytes(seq, last, self._mac))
            if self._head_store is not None:
                self._unconfirmed = (seq, last, data)
                self._head_store.set_audit_head(seq, last)
                self._unconfirmed = None
        except Exception as exc:
            self._fail(batch, exc, notify)
            return
        # Committed: the records are durable and the store counts them.
        self._adopt(seq, last, data)
        try:
            publish_head(self.path)
        except OSError as exc:
            # The head file stays one commit behind (the next commit or start replaces it).
            log.error("audit head file not replaced: %s", _why(exc))
        if not self._available:
            self._available = True
            if notify:
                self._tell(True, "")
        if self._counted is not None:
            self._counted(len(batch))
        for number, item in enumerate(batch, start=seq - len(batch) + 1):
            item.seq = number
            item.done.set()

    def _adopt(self, seq: int, last: bytes, data: bytes) -> None:
        self._seq, self._last = seq, last
        self._size += len(data)
        self._records += data.count(b"\n")

    def _fail(self, batch: list[_Pending], exc: Exception, notify: bool) -> None:
        """Nothing of a failed batch stays or is acknowledged."""
        why = _why(exc)
        self._dirty = True
        # now, so no torn record waits for the next commit (which cuts it back first anyway)
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._size)
        discard_head(self.path)
        if self._available:
            self._available = False
            log.error("audit log unavailable: %s", why)
            if notify:
                self._tell(False, f"audit log not writable: {why}")
        for item in batch:
            item.error = why
            item.done.set()

    def _restore(self) -> None:
        """Back to the last committed state before writing again (after a failure)."""
        os.ftruncate(self._fd, self._size)
        os.fsync(self._fd)
        if self._unconfirmed is not None and self._head_store is not None:
            seq, last, data = self._unconfirmed
            kept = self._head_store.audit_head()
            if kept is not None and kept[0] > self._seq:
                if kept != (seq, last):
                    raise AuditUnavailable("the state store's audit head is ahead of this log")
                # The store did count the batch whose answer was lost: its records are committed.
                write_all(self._fd, data)
                os.fsync(self._fd)
                self._adopt(seq, last, data)
            self._unconfirmed = None
        self._dirty = False

    def _tell(self, available: bool, reason: str) -> None:
        if self._on_availability is None:
            return
        try:
            self._on_availability(available, reason)
        except Exception:  # the writer must go on whatever the listener does
            log.exception("audit availability listener failed")

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._writer is not None:
            self._writer.join()
        os.close(self._fd)
        os.close(self._lock)
