"""Append-only, hash-chained audit log keyed by the HSM audit key: the writer.

The format (records, chain, gaps, signed head) is in firmware/audit/chain.py, the start rules
and `accept-gap` in firmware/audit/recovery.py, verification in firmware/audit/verify.py
(`verify`, `VerifyResult`, `Snapshot` are re-exported here). Where the records live is a medium
(firmware/audit/medium.py): a file (`AuditLog(path, mac, head_store=...)`, filemedium.py) or a
chain of rows in PostgreSQL shared by a cluster, one chain per node
(`AuditLog(PostgresMedium(connect, chain_id), mac)`, pgmedium.py). These rules hold for both.

Rules:
- `append` returns only once its record is durable; concurrent appends are committed together
  by one writer thread (group commit): every record that arrived while the previous batch was
  committed goes into the next one. A commit makes the batch's records, the signed head naming
  its last record and the state store's head durable, all or none (the medium's commit). Any
  failure fails the whole batch: `append` raises AuditUnavailable for each of its records and
  the caller must refuse what it was about to do.
- Fail closed, but stay up: the log never closes itself after a failure. The next commit first
  has the medium restored to its last committed state (and when the medium finds that the
  failed batch was committed after all, its lost answer notwithstanding, the log adopts it so
  that no seq is given twice). The log serves again as soon as writes succeed.
- `on_availability(False, reason)` is called once on the first failure, `(True, "")` once on
  the first commit after it, on the writer thread, before the callers of that batch are
  answered (so the node's alarm comes before the refusal). The reason names the cause (errno
  text, error class), never record content. It must not call `append` (it would wait for the
  thread that runs it): such an append is refused.
- A stored head is never lowered: every commit names a seq above the last one, and at start
  the store's head is at most the chain's last seq (else the start is refused).
- Start (construction): the medium's writer lock is taken and the chain inspected
  (recovery.py); a refused start raises AuditIntegrityError and changes nothing. Else a torn
  last line is cut and recorded as AUDIT_RECOVERED {"torn_bytes": n}, and a NODE_STARTED record
  {"previous_start": seq of the previous NODE_STARTED or 0, "accepted_gaps": n} is committed
  (which also brings both heads up to the chain). `start_findings` tells the node what it
  found: the bytes cut, and the gaps accepted since the last start (AUDIT_GAP records after the
  previous NODE_STARTED record).
- One writer per chain: the medium's writer lock is held from construction to `close`.
- Records never hold key material: callers pass only identities, reasons, ids and counts.
"""

from __future__ import annotations

import logging
import os
import threading
import time as time_mod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware.audit.chain import GENESIS, START_EVENT, Gap, Mac, head_bytes, make_record
from firmware.audit.filemedium import FileMedium, why
from firmware.audit.medium import Batch, Medium
from firmware.audit.recovery import inspect
from firmware.audit.verify import AuditReport, ChainResult, Snapshot, VerifyResult, verify
from firmware.core.errors import AuditUnavailable
from firmware.core.ports import HeadStore

__all__ = [
    "GENESIS",
    "AuditLog",
    "AuditReport",
    "ChainResult",
    "Gap",
    "Snapshot",
    "StartFindings",
    "VerifyResult",
    "verify",
]

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


class AuditLog:
    """The writer side. One instance per chain (the medium's writer lock enforces it).

    `target`: the log file's path (its state store head in `head_store`), or a Medium that
    keeps its own heads (PostgresMedium: the store's head is written in the same transaction
    as the records, so `head_store` must be None)."""

    def __init__(
        self,
        target: Path | str | Medium,
        mac: Mac,
        counted: Callable[[int], None] | None = None,
        head_store: HeadStore | None = None,
        on_availability: Availability | None = None,
        clock: Callable[[], float] = time_mod.time,
    ) -> None:
        if isinstance(target, str | os.PathLike):
            target = FileMedium(Path(target), head_store)
        elif head_store is not None:
            raise ValueError("a medium keeps its own heads: give head_store to FileMedium")
        self.medium: Medium = target
        self._mac, self._counted = mac, counted
        self._on_availability = on_availability
        self._queue: list[_Pending] = []
        self._cv = threading.Condition()
        self._commit_lock = threading.Lock()  # a commit vs. a snapshot
        self._closed = False
        self._writer: threading.Thread | None = None
        self._available = True
        try:
            self.medium.lock()
            self.start_findings = self._start(clock())
        except BaseException:
            self.medium.close()
            raise
        self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._writer.start()

    # --- start ------------------------------------------------------------------------------

    def _start(self, now: float) -> StartFindings:
        found = inspect(self.medium.read(), self._mac, self.medium)
        if found.problem:
            raise found.error()
        s, torn = found.scan, found.stored.torn
        self.medium.begin(found.stored, s.seq, s.mac)
        self._seq, self._last, self._records = s.seq, s.mac, s.lines
        gaps = s.gaps_since_start
        batch = [_Pending(now, RECOVERED_EVENT, {"torn_bytes": torn})] if torn else []
        batch.append(
            _Pending(now, START_EVENT, {"previous_start": s.last_start, "accepted_gaps": len(gaps)})
        )
        with self._commit_lock:
            self._commit_locked(batch, notify=False)
        if batch[-1].error:
            raise AuditUnavailable(f"the audit log cannot be written at start: {batch[-1].error}")
        return StartFindings(torn, gaps)

    @property
    def chain(self) -> str:
        """The chain's id ("" for the embedded file log)."""
        return self.medium.chain

    @property
    def count(self) -> int:
        """Records in the chain; equals `seq` unless an accepted gap is in it."""
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
        """The log file as of the last commit, for `verify` while the node keeps writing."""
        if not isinstance(self.medium, FileMedium):
            raise TypeError("snapshot() is the log file's; use verify_all()")
        with self._commit_lock:
            return self.medium.snapshot(self._seq, self._last)

    def verify_all(self) -> AuditReport:
        """Verify every chain of the medium as of now (a file: this log; PostgreSQL: every
        node's chain), this chain also against what this writer knows it made durable."""
        with self._commit_lock:
            check = self.medium.verifier(self._seq, self._last)
        return check(self._mac)

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
            adopted = self.medium.restore()
            if adopted is not None:
                self._adopt(adopted)
            seq, last, lines = self._seq, self._last, []
            for item in batch:
                seq += 1
                line, last = make_record(seq, item.time, item.event, item.fields, last, self._mac)
                lines.append(line)
            done = Batch(self._seq + 1, tuple(lines), last, head_bytes(seq, last, self._mac))
            self.medium.commit(done)
        except Exception as exc:
            self._fail(batch, exc, notify)
            return
        # Committed: the records are durable and the store counts them.
        self._adopt(done)
        if not self._available:
            self._available = True
            if notify:
                self._tell(True, "")
        if self._counted is not None:
            self._counted(len(batch))
        for number, item in enumerate(batch, start=done.first):
            item.seq = number
            item.done.set()

    def _adopt(self, batch: Batch) -> None:
        self._seq, self._last = batch.last, batch.mac
        self._records += len(batch.lines)

    def _fail(self, batch: list[_Pending], exc: Exception, notify: bool) -> None:
        """Nothing of a failed batch is acknowledged (the medium kept nothing of it)."""
        reason = why(exc)
        if self._available:
            self._available = False
            log.error("audit log unavailable: %s", reason)
            if notify:
                self._tell(False, f"audit log not writable: {reason}")
        for item in batch:
            item.error = reason
            item.done.set()

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
        self.medium.close()
