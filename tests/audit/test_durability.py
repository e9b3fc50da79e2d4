"""A write that fails is a failure: a real full disk (tmpfs) mid-batch and a write cut short,
an fsync error, a store that refuses or loses its answer. Nothing of a failed batch is
acknowledged or left in the file, the log never closes itself, the node hears of the outage once
and of its end once, and every acknowledged record verifies."""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from firmware.audit.chain import make_record
from firmware.audit.filemedium import FileMedium
from firmware.audit.log import AuditLog, verify
from firmware.core.errors import AuditUnavailable, StoreUnavailable
from tests.audit.diskfull import PAGE, SmallDisk
from tests.audit.fakes import Heads, mac

DEADLINE = 30.0
PAD = "p" * 400  # records of ~600 bytes: a few per page


class Heard:
    """The log's availability listener: every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, str]] = []

    def __call__(self, available: bool, reason: str) -> None:
        self.calls.append((available, reason))


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def _whole(path: Path) -> bool:
    """No torn record: the file is empty or ends with a record's newline."""
    data = path.read_bytes()
    return not data or data.endswith(b"\n")


def _alternate(calls: list[tuple[bool, str]]) -> bool:
    """Outages and their ends, each heard once: False, True, False, ..."""
    return [a for a, _ in calls] == [i % 2 == 1 for i in range(len(calls))]


def test_a_disk_that_fills_mid_record_acknowledges_nothing_and_serves_again_once_freed(
    tmp_path: Path,
) -> None:
    heard, heads = Heard(), Heads()
    with SmallDisk(tmp_path / "disk", size=16 * PAGE) as disk:
        path = disk.path / "audit.log"
        log = AuditLog(path, mac, head_store=heads, on_availability=heard)
        log.append(1.0, "KEY_RELEASE", {"id": "before"})
        disk.fill(leave_pages=2)
        committed, kept = path.read_bytes(), heads.head
        for tag in ("big", "bigger"):  # each would need more pages than are left
            with pytest.raises(AuditUnavailable, match=r"ENOSPC|short write"):
                log.append(2.0, "KEY_RELEASE", {"id": tag, "pad": "p" * 3 * PAGE})
            assert path.read_bytes() == committed and heads.head == kept  # nothing torn
        assert len(heard.calls) == 1 and heard.calls[0][0] is False
        assert not log.available
        disk.free()
        assert log.append(3.0, "KEY_RELEASE", {"id": "after", "pad": "p" * 3 * PAGE}) == 3
        assert heard.calls[1:] == [(True, "")] and log.available
        log.close()
        records = _records(path)
        assert [r["fields"].get("id") for r in records] == [None, "before", "after"]
        assert verify(path, mac, kept=heads.head).intact


def test_a_burst_into_a_filling_disk_acknowledges_exactly_what_the_log_holds(
    tmp_path: Path,
) -> None:
    """Six clients append while the disk fills: batches of any size cross the limit."""
    heard, heads = Heard(), Heads()
    with SmallDisk(tmp_path / "disk", size=48 * PAGE) as disk:
        path = disk.path / "audit.log"
        log = AuditLog(path, mac, head_store=heads, on_availability=heard)
        disk.fill(leave_pages=6)  # room for a few dozen records, then a full disk
        acknowledged: dict[str, int] = {}
        refused: list[str] = []
        lock = threading.Lock()

        def burst(client: int) -> None:
            for i in range(40):
                tag = f"c{client}-{i}"
                try:
                    seq = log.append(float(i), "KEY_RELEASE", {"id": tag, "pad": PAD})
                except AuditUnavailable:
                    with lock:
                        refused.append(tag)
                else:
                    with lock:
                        acknowledged[tag] = seq

        threads = [threading.Thread(target=burst, args=(c,)) for c in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert acknowledged and refused
        assert _whole(path)  # nothing torn is left, before anything else is written
        written = {r["fields"].get("id"): r["seq"] for r in _records(path)}
        assert {t: written.get(t) for t in acknowledged} == acknowledged
        assert not set(refused) & set(written)  # no refused record is in the log
        assert verify(path, mac, log.snapshot(), kept=heads.head).intact

        disk.free()
        seq = log.append(99.0, "KEY_RELEASE", {"id": "after", "pad": PAD})
        log.close()
        assert _alternate(heard.calls) and heard.calls[-1] == (True, "")
        assert all("ENOSPC" in reason for available, reason in heard.calls if not available)
        assert _records(path)[-1]["seq"] == seq
        assert verify(path, mac, kept=heads.head).intact
        assert heads.head is not None and heads.head[0] == seq


def _pad_to(log: AuditLog, end: int) -> None:
    """Append one record so that the log ends `end` bytes into a page."""
    size = log.snapshot().size
    base = len(make_record(log.seq + 1, 1.0, "PAD", {"pad": ""}, bytes(32), mac)[0])
    room = (end - size - base) % PAGE
    log.append(1.0, "PAD", {"pad": "p" * room})
    assert log.snapshot().size % PAGE == end


def test_a_write_cut_short_by_a_full_disk_is_a_failure_never_a_record(tmp_path: Path) -> None:
    """The log on a small disk of its own (through a symlink), its head and the store elsewhere:
    only the log's write can fail, and the disk has room for half a record."""
    heard, heads = Heard(), Heads()
    with SmallDisk(tmp_path / "disk", size=4 * PAGE) as disk:
        (tmp_path / "node").mkdir()
        path = tmp_path / "node" / "audit.log"
        path.symlink_to(disk.path / "audit.log")
        log = AuditLog(path, mac, head_store=heads, on_availability=heard)
        try:
            _pad_to(log, PAGE - 100)
            disk.fill()
            committed, kept = path.read_bytes(), heads.head
            with pytest.raises(AuditUnavailable, match="short write"):
                log.append(2.0, "KEY_RELEASE", {"id": "half", "pad": "x" * 200})
            assert path.read_bytes() == committed and heads.head == kept
            assert heard.calls == [(False, "audit log not writable: short write (ENOSPC)")]
            disk.free()
            log.append(3.0, "KEY_RELEASE", {"id": "whole"})
        finally:
            log.close()
        records = _records(path)
        assert [r["event"] for r in records] == ["NODE_STARTED", "PAD", "KEY_RELEASE"]
        assert records[-1]["fields"] == {"id": "whole"}
        assert heard.calls[1:] == [(True, "")]
        assert verify(path, mac, kept=heads.head).intact


def test_a_full_disk_at_start_refuses_the_start_and_holds_nothing(tmp_path: Path) -> None:
    with SmallDisk(tmp_path / "disk", size=4 * PAGE) as disk:
        path = disk.path / "audit.log"
        AuditLog(path, mac).close()
        disk.fill()
        with pytest.raises(AuditUnavailable, match=r"at start.*No space left on device"):
            AuditLog(path, mac)
        assert _whole(path)
        disk.free()
        AuditLog(path, mac).close()  # the failed start released the writer lock
        assert verify(path, mac).intact


# --- syscall and store failures (no real device fails fsync on demand) ------------------------


class _FailingCalls:
    """os.fsync / os.ftruncate failing the next `left` calls the audit writer thread makes
    (on the file `only`, when given)."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, name: str, code: int, only: Path | None = None
    ) -> None:
        self.real = getattr(os, name)
        self.code, self.left, self.only = code, 0, only
        monkeypatch.setattr(os, name, self)

    def _aimed(self, fd: int) -> bool:
        return self.only is None or os.path.samestat(os.fstat(fd), os.stat(self.only))

    def __call__(self, *args: Any) -> Any:
        if self.left and threading.current_thread().name == "audit-writer" and self._aimed(args[0]):
            self.left -= 1
            raise OSError(self.code, os.strerror(self.code))
        return self.real(*args)


def test_an_fsync_error_fails_the_batch_and_the_file_is_cut_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heard, heads = Heard(), Heads()
    path = tmp_path / "audit.log"
    log = AuditLog(path, mac, head_store=heads, on_availability=heard)
    fsync = _FailingCalls(monkeypatch, "fsync", errno.EIO, only=path)  # the log's, not the head's
    committed = path.read_bytes()
    fsync.left = 3
    for i in range(3):
        with pytest.raises(AuditUnavailable, match="EIO"):
            log.append(float(i), "KEY_RELEASE", {"target": "sip:secret-target@x.net"})
        assert path.read_bytes() == committed
    assert heard.calls == [(False, "audit log not writable: Input/output error (EIO)")]
    assert log.append(9.0, "KEY_RELEASE", {"id": "after"}) == 2
    log.close()
    assert heard.calls[1:] == [(True, "")]
    assert [r["event"] for r in _records(path)] == ["NODE_STARTED", "KEY_RELEASE"]
    assert verify(path, mac, kept=heads.head).intact


def test_a_file_that_could_not_be_cut_back_at_once_is_cut_back_before_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsync = _FailingCalls(monkeypatch, "fsync", errno.EIO)
    truncate = _FailingCalls(monkeypatch, "ftruncate", errno.EIO)
    path = tmp_path / "audit.log"
    log = AuditLog(path, mac)
    fsync.left = truncate.left = 1
    with pytest.raises(AuditUnavailable):
        log.append(1.0, "KEY_RELEASE", {"id": "not-written"})
    assert b"not-written" in path.read_bytes()  # still there: the cut failed too
    log.append(2.0, "KEY_RELEASE", {"id": "next"})
    log.close()
    assert b"not-written" not in path.read_bytes()
    assert verify(path, mac).intact


class _RefusingHeads(Heads):
    """A store that fails the next commits: `lose_answer` commits and then fails."""

    def __init__(self) -> None:
        super().__init__()
        self.fail, self.lose_answer = 0, False

    def set_audit_head(self, count: int, mac: bytes, durable: bool = True) -> None:
        if self.fail:
            self.fail -= 1
            if self.lose_answer:
                super().set_audit_head(count, mac)
            raise StoreUnavailable("connection lost")
        super().set_audit_head(count, mac)


def test_a_store_that_refuses_the_head_fails_the_batch_and_the_log_goes_on(tmp_path: Path) -> None:
    heads = _RefusingHeads()
    path = tmp_path / "audit.log"
    log = AuditLog(path, mac, head_store=heads)
    committed = path.read_bytes()
    heads.fail = 1
    with pytest.raises(AuditUnavailable, match="STORE_UNAVAILABLE"):
        log.append(1.0, "KEY_RELEASE", {"id": "not-written"})
    assert path.read_bytes() == committed
    assert log.append(2.0, "KEY_RELEASE", {"id": "next"}) == 2
    log.close()
    assert b"not-written" not in path.read_bytes()
    assert verify(path, mac, kept=heads.head).intact


def test_a_batch_the_store_counted_though_its_answer_was_lost_is_written_back(
    tmp_path: Path,
) -> None:
    """The store committed the head of a batch its caller was told failed (the connection
    dropped after COMMIT): the log must hold that batch again, never lower the store's head,
    and never give its seq to another record."""
    heads = _RefusingHeads()
    path = tmp_path / "audit.log"
    log = AuditLog(path, mac, head_store=heads)
    heads.fail, heads.lose_answer = 1, True
    with pytest.raises(AuditUnavailable):
        log.append(1.0, "KEY_RELEASE", {"id": "unanswered"})
    assert heads.head is not None and heads.head[0] == 2
    assert log.append(2.0, "KEY_RELEASE", {"id": "next"}) == 3
    log.close()
    ids = [r["fields"].get("id") for r in _records(path)]
    assert ids == [None, "unanswered", "next"]
    assert verify(path, mac, kept=heads.head).intact


def test_a_store_head_ahead_of_the_log_keeps_the_log_refusing(tmp_path: Path) -> None:
    heads = _RefusingHeads()
    path = tmp_path / "audit.log"
    log = AuditLog(path, mac, head_store=heads)
    heads.fail = 1
    with pytest.raises(AuditUnavailable):
        log.append(1.0, "A", {})
    heads.head = (7, bytes(32))  # moved on by someone else: this log can no longer follow it
    for _ in range(2):
        with pytest.raises(AuditUnavailable, match="ahead of this log"):
            log.append(2.0, "B", {})
    log.close()


# --- the availability listener ----------------------------------------------------------------


def _bounded(fn: Callable[[], Any]) -> Any:
    """fn() on a thread of its own, waited for at most DEADLINE seconds (a dead or deadlocked
    writer fails the test instead of hanging it)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=DEADLINE)
    assert not thread.is_alive(), "the audit writer is stuck"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_an_append_from_the_availability_listener_is_refused_not_deadlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsync = _FailingCalls(monkeypatch, "fsync", errno.EIO)
    inner: list[BaseException] = []

    def listener(available: bool, reason: str) -> None:
        try:
            log.append(5.0, "FROM_LISTENER", {})
        except AuditUnavailable as exc:
            inner.append(exc)

    log = AuditLog(tmp_path / "audit.log", mac, on_availability=listener)
    fsync.left = 1
    with pytest.raises(AuditUnavailable):
        _bounded(lambda: log.append(1.0, "A", {}))
    log.close()
    assert len(inner) == 1 and "writer itself" in str(inner[0])


def test_a_failing_availability_listener_does_not_stop_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsync = _FailingCalls(monkeypatch, "fsync", errno.EIO)

    def listener(available: bool, reason: str) -> None:
        raise RuntimeError("listener bug")

    log = AuditLog(tmp_path / "audit.log", mac, on_availability=listener)
    fsync.left = 1
    with pytest.raises(AuditUnavailable):
        _bounded(lambda: log.append(1.0, "A", {}))
    assert _bounded(lambda: log.append(2.0, "B", {})) == 2
    log.close()


def test_a_head_file_that_cannot_be_replaced_after_the_store_counted_the_batch_does_not_undo_it(
    tmp_path: Path,
) -> None:
    """Past the store's commit the records are committed: the append is answered, and the head
    file catches up at the next commit."""
    heads = Heads()
    path = tmp_path / "audit.log"
    log = AuditLog(path, mac, head_store=heads)
    head = tmp_path / "audit.log.head"
    head.unlink()
    head.mkdir()  # a rename over a directory fails
    (head / "x").touch()
    try:
        assert _bounded(lambda: log.append(1.0, "A", {"id": "kept"})) == 2
        assert heads.head is not None and heads.head[0] == 2
    finally:
        (head / "x").unlink()
        head.rmdir()
    log.append(2.0, "B", {})
    log.close()
    assert [r["fields"].get("id") for r in _records(path)] == [None, "kept", None]
    assert verify(path, mac, kept=heads.head).intact


# --- one fsync per commit ---------------------------------------------------------------------


class _CountedFsyncs:
    """os.fsync calls on files in `folder`, by file name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
        self.real, self.folder = os.fsync, str(folder)
        self.names: list[str] = []
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        folder, _, name = os.readlink(f"/proc/self/fd/{fd}").rpartition("/")
        if folder == self.folder:
            self.names.append(name)
        self.real(fd)


def test_a_commit_syncs_only_the_log_and_the_heads_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records are durable before their append returns (the log's fsync); the heads are
    written by every commit (readers see them current) and made durable at most once per
    interval and at close."""
    now = [0.0]
    path, heads = tmp_path / "audit.log", Heads()
    log = AuditLog(FileMedium(path, heads, heads_sync_interval=1.0, clock=lambda: now[0]), mac)
    fsyncs = _CountedFsyncs(monkeypatch, tmp_path)
    assert heads.durable == [True]  # the start's commit: the first is durable
    now[0] = 0.5
    log.append(1.0, "KEY_RELEASE", {"id": "a"})
    assert fsyncs.names == ["audit.log"]
    assert heads.durable[-1] is False
    assert heads.head is not None and heads.head[0] == 2  # current for every reader
    assert verify(path, mac, kept=heads.head).intact  # the head file too
    now[0] = 1.2
    log.append(2.0, "KEY_RELEASE", {"id": "b"})
    assert fsyncs.names == ["audit.log", "audit.log", "audit.log.head.tmp"]
    assert heads.durable[-1] is True
    now[0] = 1.5
    log.append(3.0, "KEY_RELEASE", {"id": "c"})
    assert fsyncs.names[3:] == ["audit.log"] and heads.durable[-1] is False
    log.close()  # the heads of the last commit made durable
    assert fsyncs.names[4:] == ["audit.log.head.tmp"] and heads.durable[-1] is True
    assert heads.head is not None and heads.head[0] == 4
    assert verify(path, mac, kept=heads.head).intact
