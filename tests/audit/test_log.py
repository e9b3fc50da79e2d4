"""The writer and verify on an HMAC key: chain, group commit, what verify names, live snapshots.
Every log starts with the NODE_STARTED record its first writer made (record 1)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from firmware.audit.log import AuditLog, verify
from firmware.core.errors import AuditUnavailable, HsmUnavailable
from tests.audit.fakes import Heads, mac, other_mac


def _log(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "audit.log"
    log = AuditLog(path, mac)
    for i in range(n):
        log.append(1000.0 + i, "KEY_RELEASE", {"target": f"sip:u{i}@x.net", "liid": "L1"})
    log.close()
    return path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _events(path: Path) -> list[str]:
    return [json.loads(line)["event"] for line in _lines(path)]


def test_an_untouched_log_verifies(tmp_path: Path) -> None:
    result = verify(_log(tmp_path, 5), mac)
    assert (result.intact, result.records, result.first_bad, result.gaps) == (True, 6, 0, ())
    assert _events(tmp_path / "audit.log") == ["NODE_STARTED"] + ["KEY_RELEASE"] * 5


def test_names_a_changed_record(tmp_path: Path) -> None:
    path = _log(tmp_path, 5)
    lines = _lines(path)
    lines[3] = lines[3].replace(b"u2", b"u9")
    path.write_bytes(b"".join(lines))
    assert verify(path, mac).first_bad == 4


def test_names_a_removed_record(tmp_path: Path) -> None:
    path = _log(tmp_path, 5)
    lines = _lines(path)
    del lines[2]
    path.write_bytes(b"".join(lines))
    assert verify(path, mac).first_bad == 3


def test_names_reordered_records(tmp_path: Path) -> None:
    path = _log(tmp_path, 5)
    lines = _lines(path)
    lines[4], lines[5] = lines[5], lines[4]
    path.write_bytes(b"".join(lines))
    assert verify(path, mac).first_bad == 5


def test_a_cut_tail_shows_through_the_signed_head(tmp_path: Path) -> None:
    path = _log(tmp_path, 5)
    path.write_bytes(b"".join(_lines(path)[:3]))
    result = verify(path, mac)
    assert not result.intact and result.first_bad == 4


def test_another_key_does_not_verify(tmp_path: Path) -> None:
    assert verify(_log(tmp_path, 2), other_mac).first_bad == 1


def test_a_torn_last_line_is_reported_by_verify_before_the_next_start(tmp_path: Path) -> None:
    path = _log(tmp_path, 3)
    with open(path, "ab") as handle:
        handle.write(b'{"event":"KEY_RE')
    result = verify(path, mac)
    assert (result.intact, result.records, result.first_bad) == (False, 4, 5)
    assert "incomplete" in result.detail


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
    assert sorted(seqs) == list(range(2, 402))
    result = verify(path, mac)
    assert result.records == 401 and result.intact
    records = [json.loads(line) for line in _lines(path)]
    assert all(r["seq"] == s for r, s in zip(records[1:], range(2, 402), strict=True))
    assert {r["seq"] for r in records if r["event"] == "E"} == set(seqs)


def test_append_fails_closed_when_the_hsm_cannot_mac(tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky(data: bytes) -> bytes:
        calls["n"] += 1
        if calls["n"] == 3:  # NODE_STARTED took a record's and a head's MAC
            raise HsmUnavailable("gone")
        return mac(data)

    seen: list[tuple[bool, str]] = []
    log = AuditLog(tmp_path / "audit.log", flaky, on_availability=lambda *a: seen.append(a))
    with pytest.raises(AuditUnavailable, match="HSM_UNAVAILABLE"):
        log.append(1.0, "A", {})
    assert log.append(3.0, "C", {}) == 2
    log.close()
    assert verify(tmp_path / "audit.log", mac).intact
    assert [a for a, _ in seen] == [False, True]
    assert _events(tmp_path / "audit.log") == ["NODE_STARTED", "C"]


def test_a_second_writer_of_the_same_log_is_refused(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", mac)
    try:
        with pytest.raises(AuditUnavailable, match="in use"):
            AuditLog(tmp_path / "audit.log", mac)
    finally:
        log.close()
    AuditLog(tmp_path / "audit.log", mac).close()  # the lock went with the first writer


def test_a_cut_tail_with_an_old_genuine_head_put_back_shows_through_the_store(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    heads = Heads()
    log = AuditLog(path, mac, head_store=heads)
    log.append(1.0, "A", {})
    old_head = (tmp_path / "audit.log.head").read_bytes()
    size = path.stat().st_size
    log.append(2.0, "B", {})
    log.close()
    assert heads.head is not None and heads.head[0] == 3
    with open(path, "r+b") as handle:
        handle.truncate(size)
    (tmp_path / "audit.log.head").write_bytes(old_head)
    assert verify(path, mac).intact  # the file alone cannot tell
    result = verify(path, mac, kept=heads.head)
    assert not result.intact and result.first_bad == 3


def test_a_live_snapshot_verifies_and_finds_a_tail_cut_under_an_old_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, mac)
    try:
        log.append(1.0, "A", {})
        old_head, size = (tmp_path / "audit.log.head").read_bytes(), path.stat().st_size
        log.append(2.0, "B", {})
        assert verify(path, mac, log.snapshot()).intact
        with open(path, "r+b") as handle:
            handle.truncate(size)
        (tmp_path / "audit.log.head").write_bytes(old_head)
        result = verify(path, mac, log.snapshot())
        assert (result.intact, result.first_bad) == (False, 3)
    finally:
        log.close()
