from __future__ import annotations

import hashlib
import hmac
import threading
from pathlib import Path

import pytest

from firmware.audit.log import AuditLog, verify
from firmware.core.errors import AuditUnavailable, HsmUnavailable

KEY = b"k" * 32


def mac(data: bytes) -> bytes:
    return hmac.digest(KEY, data, hashlib.sha256)


def _log(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "audit.log"
    log = AuditLog(path, mac)
    for i in range(n):
        log.append(1000.0 + i, "KEY_RELEASE", {"target": f"sip:u{i}@x.net", "liid": "L1"})
    log.close()
    return path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_an_untouched_log_verifies(tmp_path: Path) -> None:
    result = verify(_log(tmp_path, 5), mac)
    assert (result.intact, result.records, result.first_bad) == (True, 5, 0)


def test_names_a_changed_record(tmp_path: Path) -> None:
    path = _log(tmp_path, 5)
    lines = _lines(path)
    lines[2] = lines[2].replace(b"u2", b"u9")
    path.write_bytes(b"".join(lines))
    assert verify(path, mac).first_bad == 3


def test_names_a_removed_record(tmp_path: Path) -> None:
    path = _log(tmp_path, 5)
    lines = _lines(path)
    del lines[1]
    path.write_bytes(b"".join(lines))
    assert verify(path, mac).first_bad == 2


def test_names_reordered_records(tmp_path: Path) -> None:
    path = _log(tmp_path, 5)
    lines = _lines(path)
    lines[3], lines[4] = lines[4], lines[3]
    path.write_bytes(b"".join(lines))
    assert verify(path, mac).first_bad == 4


def test_a_cut_tail_shows_through_the_signed_head(tmp_path: Path) -> None:
    path = _log(tmp_path, 5)
    path.write_bytes(b"".join(_lines(path)[:3]))
    result = verify(path, mac)
    assert not result.intact and result.first_bad == 4


def test_another_key_does_not_verify(tmp_path: Path) -> None:
    path = _log(tmp_path, 2)
    assert verify(path, lambda d: hmac.digest(b"x" * 32, d, hashlib.sha256)).first_bad == 1


def test_a_torn_last_line_is_cut_and_the_chain_goes_on(tmp_path: Path) -> None:
    path = _log(tmp_path, 3)
    with open(path, "ab") as handle:
        handle.write(b'{"seq":4,"ti')
    log = AuditLog(path, mac)
    assert log.append(2000.0, "X", {}) == 4
    log.close()
    assert verify(path, mac).intact


def test_concurrent_appends_are_all_durable_and_chained(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, mac)
    seqs: list[int] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        for i in range(50):
            s = log.append(float(i), "E", {"thread": t})
            with lock:
                seqs.append(s)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert sorted(seqs) == list(range(1, 401))
    assert verify(path, mac).records == 400 and verify(path, mac).intact


def test_append_fails_closed_when_the_hsm_cannot_mac(tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky(data: bytes) -> bytes:
        calls["n"] += 1
        if calls["n"] == 3:
            raise HsmUnavailable("gone")
        return mac(data)

    log = AuditLog(tmp_path / "audit.log", flaky)
    log.append(1.0, "A", {})  # record + head: 2 MACs
    with pytest.raises(AuditUnavailable):
        log.append(2.0, "B", {})
    assert log.append(3.0, "C", {}) == 2
    log.close()
    assert verify(tmp_path / "audit.log", mac).intact


class _Heads:
    def __init__(self) -> None:
        self.head: tuple[int, bytes] | None = None

    def audit_head(self) -> tuple[int, bytes] | None:
        return self.head

    def set_audit_head(self, count: int, mac: bytes) -> None:
        self.head = (count, mac)


def test_a_cut_tail_with_an_old_genuine_head_put_back_shows_through_the_store(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    heads = _Heads()
    log = AuditLog(path, mac, head_store=heads)
    log.append(1.0, "A", {})
    old_head = (tmp_path / "audit.log.head").read_bytes()
    size = path.stat().st_size
    log.append(2.0, "B", {})
    log.close()
    assert heads.head is not None and heads.head[0] == 2
    with open(path, "r+b") as handle:
        handle.truncate(size)
    (tmp_path / "audit.log.head").write_bytes(old_head)
    assert verify(path, mac).intact  # the file alone cannot tell
    result = verify(path, mac, kept=heads.head)
    assert not result.intact and result.first_bad == 2


def test_restart_after_a_crash_before_the_head_moves_both_heads_forward(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    heads = _Heads()
    log = AuditLog(path, mac, head_store=heads)
    log.append(1.0, "A", {})
    log.close()
    stale = heads.head
    log = AuditLog(path, mac, head_store=heads)
    log.append(2.0, "B", {})
    log.close()
    heads.head = stale  # the crash hit between the log's fsync and the store's commit
    log = AuditLog(path, mac, head_store=heads)
    log.close()
    assert heads.head is not None and heads.head[0] == 2
    assert verify(path, mac, kept=heads.head).intact
