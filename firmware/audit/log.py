"""Append-only, hash-chained audit log keyed by the HSM audit key.

Format: one JSON object per line, keys sorted, no spaces (the canonical form that is MACed):
    {"seq": n, "time": t, "event": "...", "fields": {...}, "prev": "<hex mac of n-1>"}
plus "mac": HMAC-SHA-256 (in the HSM) over the canonical form without "mac". Record 1 chains to
32 zero bytes. Beside the log, `<log>.head` holds the signed checkpoint {"count", "mac", "sig"}
(sig = HMAC over "kmsnode-audit-head" || count || mac), replaced atomically after every commit,
so cutting records off the end shows.

Rules:
- `append` returns only once its record is durable (written and fsynced); concurrent appends are
  committed together by one writer (group commit). If the record cannot be written or MACed,
  `append` raises AuditUnavailable and the caller must refuse what it was about to do.
- Records never hold key material: callers pass only identities, reasons, ids and counts.
- `verify` names the first record (1-based position in the file) that was changed, removed,
  reordered or is missing; `first_bad == 0` when the log is intact. A record must be byte for
  byte the canonical form that was MACed (any flipped byte shows, even one that would parse to
  the same values, e.g. the case of a hex digit).
- The chain head (count, MAC of the last record) is also kept in the state store (`HeadStore`),
  written in the same commit after the records are durable and before the head file is
  replaced; `verify` given that head names a cut tail even when an older, genuine head file was
  put back while the node was stopped.
- A live log is verified against `AuditLog.snapshot()`: the file's size and signed head taken
  between two commits (a commit writes records, fsyncs, then replaces the head, all under the
  commit lock), plus the writer's own count and last MAC held in memory. Verification then never
  sees a half-written batch or a head newer than the records it read, and a tail cut while the
  node runs is found even if an older (genuine) head file was put back.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware.core.errors import AuditUnavailable
from firmware.core.ports import HeadStore

GENESIS = bytes(32)
HEAD_CONTEXT = b"kmsnode-audit-head"

Mac = Callable[[bytes], bytes]


def canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _head_input(count: int, mac: bytes) -> bytes:
    return HEAD_CONTEXT + count.to_bytes(8, "big") + mac


@dataclass(frozen=True)
class VerifyResult:
    intact: bool
    records: int
    first_bad: int  # 0 when intact
    detail: str = ""


@dataclass(frozen=True)
class Snapshot:
    """A consistent view of a live log (see the module rules)."""

    size: int  # bytes of the log file after the last commit
    head: bytes = field(repr=False)  # the signed head file's content then (b"" if absent)
    count: int  # records the writer has made durable
    last: bytes = field(repr=False)  # MAC of its last record (GENESIS when none)


class _Pending:
    __slots__ = ("done", "error", "event", "fields", "time")

    def __init__(self, time: float, event: str, fields: Mapping[str, Any]) -> None:
        self.time, self.event, self.fields = time, event, dict(fields)
        self.done = threading.Event()
        self.error: BaseException | None = None


class AuditLog:
    """The writer side. One instance per log file per process."""

    def __init__(
        self,
        path: Path,
        mac: Mac,
        counted: Callable[[int], None] | None = None,
        head_store: HeadStore | None = None,
    ) -> None:
        self.path = Path(path)
        self._counted = counted
        self._head_store = head_store
        self.head_path = self.path.with_name(self.path.name + ".head")
        self._mac = mac
        self._queue: list[_Pending] = []
        self._cv = threading.Condition()
        self._commit_lock = threading.Lock()  # a commit vs. a snapshot
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seq, self._last = self._recover()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._writer.start()

    # --- start ------------------------------------------------------------------------------

    def _recover(self) -> tuple[int, bytes]:
        """Position after the last complete record; a torn final line (crash mid-write) is cut."""
        if not self.path.exists():
            return 0, GENESIS
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)
                os.fsync(handle.fileno())
            data = data[:keep]
        lines = data.splitlines()
        if not lines:
            return 0, GENESIS
        last = json.loads(lines[-1])
        seq, mac = int(last["seq"]), bytes.fromhex(last["mac"])
        # A crash between the log's fsync and the head's replace leaves the head behind: re-sign
        # it, but only when every record's chain and MAC verifies (nobody else can make those)
        # and the old head is genuine and not ahead of the log.
        bad, _ = _check_chain(lines, self._mac)
        head = _read_head(self.head_path, self._mac)
        kept = self._head_store.audit_head() if self._head_store is not None else None
        if (
            bad == 0
            and (head is None or (head[0] <= len(lines) and head[2]))
            and _covers(lines, kept)
        ):
            if self._head_store is not None:
                self._head_store.set_audit_head(seq, mac)
            self._write_head(seq, mac)
        return seq, mac

    @property
    def count(self) -> int:
        return self._seq

    def snapshot(self) -> Snapshot:
        """The log as of the last commit, for `verify` while the node keeps writing."""
        with self._commit_lock:
            size = os.fstat(self._fd).st_size
            try:
                head = self.head_path.read_bytes()
            except OSError:
                head = b""
            return Snapshot(size, head, self._seq, self._last)

    # --- writing ----------------------------------------------------------------------------

    def append(self, time: float, event: str, fields: Mapping[str, Any]) -> int:
        """Write one record durably; returns its sequence number. Raises AuditUnavailable."""
        pending = _Pending(time, event, fields)
        with self._cv:
            if self._closed:
                raise AuditUnavailable("audit log is closed")
            self._queue.append(pending)
            self._cv.notify()
        pending.done.wait()
        if pending.error is not None:
            raise AuditUnavailable(f"audit record not written: {type(pending.error).__name__}")
        return int(pending.fields["_seq"])

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                batch, self._queue = self._queue, []
                if not batch and self._closed:
                    return
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        with self._commit_lock:
            self._commit_locked(batch)

    def _commit_locked(self, batch: list[_Pending]) -> None:
        seq, last = self._seq, self._last
        lines = []
        size = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            for item in batch:
                seq += 1
                record: dict[str, Any] = {
                    "seq": seq,
                    "time": round(item.time, 6),
                    "event": item.event,
                    "fields": item.fields,
                    "prev": last.hex(),
                }
                last = self._mac(canonical(record))
                record["mac"] = last.hex()
                lines.append(canonical(record) + b"\n")
                item.fields["_seq"] = seq
            os.write(self._fd, b"".join(lines))
            os.fsync(self._fd)
            if self._head_store is not None:
                self._head_store.set_audit_head(seq, last)
            self._write_head(seq, last)
        except Exception as exc:
            # Nothing of a failed batch may stay: its callers are told it was not written.
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                self._closed = True  # cannot restore a known state: refuse from now on
            for item in batch:
                item.error = exc
                item.done.set()
            return
        self._seq, self._last = seq, last
        if self._counted is not None:
            self._counted(len(batch))
        for item in batch:
            item.done.set()

    def _write_head(self, count: int, mac: bytes) -> None:
        head = {"count": count, "mac": mac.hex(), "sig": self._mac(_head_input(count, mac)).hex()}
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, canonical(head) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.head_path)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._writer.join()
        os.close(self._fd)


def _covers(lines: list[bytes], kept: tuple[int, bytes] | None) -> bool:
    """True when the log still holds the record the kept head names (or nothing was kept)."""
    if kept is None or kept[0] == 0:
        return True
    count, mac = kept
    if len(lines) < count:
        return False
    try:
        return bool(json.loads(lines[count - 1])["mac"] == mac.hex())
    except (ValueError, KeyError, TypeError):
        return False


def _check_chain(lines: list[bytes], mac: Mac) -> tuple[int, bytes]:
    """(position of the first bad record or 0, MAC of the last good record)."""
    prev = GENESIS
    for position, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            claimed = bytes.fromhex(record.pop("mac"))
            ok = (
                record.get("seq") == position
                and bytes.fromhex(record.get("prev", "")) == prev
                and mac(canonical(record)) == claimed
                # byte for byte as written: hex case, escapes, number forms cannot be altered
                and canonical({**record, "mac": claimed.hex()}) == line
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            return position, prev
        prev = claimed
    return 0, prev


def _parse_head(data: bytes, mac: Mac) -> tuple[int, bytes, bool] | None:
    """(count, mac, signature valid) of a head checkpoint, or None when empty/unreadable."""
    try:
        head = json.loads(data)
        count, head_mac = int(head["count"]), bytes.fromhex(head["mac"])
        return count, head_mac, mac(_head_input(count, head_mac)) == bytes.fromhex(head["sig"])
    except (ValueError, KeyError, TypeError):
        return None


def _read_head(path: Path, mac: Mac) -> tuple[int, bytes, bool] | None:
    """(count, mac, signature valid) of the head checkpoint, or None when absent/unreadable."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return _parse_head(data, mac)


def verify(
    path: Path,
    mac: Mac,
    snapshot: Snapshot | None = None,
    kept: tuple[int, bytes] | None = None,
) -> VerifyResult:
    """Check every record's chain and MAC, and the signed head. Never raises for bad content.

    With `snapshot` (of the live writer of `path`), only the bytes it counted are read, its head
    is used, and every record the writer made durable must still be there. With `kept` (the
    head from the state store), the log must still hold the record it names."""
    path = Path(path)
    try:
        if snapshot is not None:
            with open(path, "rb") as handle:
                lines = handle.read(snapshot.size).splitlines()
        else:
            lines = path.read_bytes().splitlines() if path.exists() else []
    except OSError as exc:
        return VerifyResult(False, 0, 1, f"cannot read the log: {exc.strerror}")
    bad, last = _check_chain(lines, mac)
    if bad:
        return VerifyResult(False, len(lines), bad, f"record {bad} was changed, removed or moved")
    if not _covers(lines, kept):
        assert kept is not None
        first = min(len(lines), kept[0] - 1) + 1
        return VerifyResult(
            False, len(lines), first, "records the state store counted are missing or replaced"
        )
    if snapshot is not None:
        if len(lines) < snapshot.count:
            return VerifyResult(
                False,
                len(lines),
                len(lines) + 1,
                f"{snapshot.count - len(lines)} record(s) this node wrote are missing at the end",
            )
        if snapshot.count and json.loads(lines[snapshot.count - 1])["mac"] != snapshot.last.hex():
            return VerifyResult(
                False, len(lines), snapshot.count, "the log is not the one this node wrote"
            )
        head = _parse_head(snapshot.head, mac)
    else:
        head = _read_head(path.with_name(path.name + ".head"), mac)
    if head is None:
        if not lines:
            return VerifyResult(True, 0, 0)
        return VerifyResult(False, len(lines), len(lines) + 1, "the signed head is missing")
    count, head_mac, signed = head
    if not signed:
        return VerifyResult(False, len(lines), len(lines) + 1, "the signed head does not verify")
    if count > len(lines):
        return VerifyResult(
            False, len(lines), len(lines) + 1, f"{count - len(lines)} record(s) missing at the end"
        )
    if count < len(lines) or (count and head_mac != last):
        return VerifyResult(False, len(lines), count + 1, "records after the signed head")
    return VerifyResult(True, len(lines), 0)
