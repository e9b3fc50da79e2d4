"""What the writer does at start with what it finds (firmware/audit/recovery.py), what
`accept_gap` writes, and how verify reports an acknowledged gap. Unit tests on an HMAC key; the
same rules through a real node and the SoftHSM key are in test_node_start.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from firmware.audit.chain import canonical, head_bytes, head_input, make_record
from firmware.audit.log import AuditLog, StartFindings, verify
from firmware.audit.recovery import HINT, accept_gap
from firmware.core.errors import AuditIntegrityError, AuditUnavailable, HsmUnavailable, KmsError
from tests.audit.fakes import Heads, mac, other_mac

REASON = "tail lost with the old disk; backup checked"


def _stopped(tmp_path: Path, n: int = 6, heads: Heads | None = None) -> tuple[Path, Heads]:
    """A log of NODE_STARTED + n records, written with a head store; its writer closed."""
    heads = heads if heads is not None else Heads()
    path = tmp_path / "audit.log"
    log = AuditLog(path, mac, head_store=heads)
    for i in range(n):
        log.append(1000.0 + i, "KEY_RELEASE", {"target": f"sip:u{i}@x.net"})
    log.close()
    return path, heads


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _lines(path)]


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(b"".join(_lines(path)[:keep]))


def _head(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _started(path: Path, heads: Heads | None) -> AuditLog:
    return AuditLog(path, mac, head_store=heads)


def _refused(path: Path, heads: Heads | None) -> str:
    with pytest.raises(AuditIntegrityError) as info:
        AuditLog(path, mac, head_store=heads)
    message = str(info.value)
    assert "\n" not in message and message.endswith(HINT), message
    return message


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name != "audit.log.lock"}


# --- a torn last line -------------------------------------------------------------------------


def test_a_torn_last_line_is_cut_recorded_without_its_content_and_the_chain_goes_on(
    tmp_path: Path,
) -> None:
    path, heads = _stopped(tmp_path, 3)
    torn = b'{"event":"KEY_RELEASE","fields":{"target":"sip:secret'
    with open(path, "ab") as handle:
        handle.write(torn)
    log = _started(path, heads)
    assert log.start_findings == StartFindings(torn_bytes=len(torn), accepted_gaps=())
    assert log.append(2000.0, "X", {}) == 7
    log.close()
    records = _records(path)
    assert [r["event"] for r in records[4:]] == ["AUDIT_RECOVERED", "NODE_STARTED", "X"]
    assert records[4]["fields"] == {"torn_bytes": len(torn)}
    assert b"secret" not in path.read_bytes()
    assert verify(path, mac, kept=heads.head).intact


def test_a_huge_torn_line_of_garbage_is_cut_like_any_torn_line(tmp_path: Path) -> None:
    path, heads = _stopped(tmp_path, 2)
    with open(path, "ab") as handle:
        handle.write(b"\xff\x00A" * 2_000_000)
    log = _started(path, heads)
    log.close()
    assert log.start_findings.torn_bytes == 6_000_000
    assert verify(path, mac, kept=heads.head).intact


def test_a_refused_start_changes_nothing_not_even_a_torn_line(tmp_path: Path) -> None:
    path, heads = _stopped(tmp_path, 6)
    _cut(path, 4)
    with open(path, "ab") as handle:
        handle.write(b'{"event":"KEY_RE')
    before, kept = _files(path), heads.head
    _refused(path, heads)
    assert _files(path) == before and heads.head == kept


# --- a log behind its heads -------------------------------------------------------------------


def test_a_tail_cut_while_stopped_stops_the_start_and_says_how_many_records_are_missing(
    tmp_path: Path,
) -> None:
    path, heads = _stopped(tmp_path, 6)
    _cut(path, 4)
    message = _refused(path, heads)
    assert "ends at record 4" in message and "3 record(s) missing" in message


def test_a_tail_cut_shows_through_the_signed_head_alone(tmp_path: Path) -> None:
    path, _ = _stopped(tmp_path, 6)
    _cut(path, 4)
    message = _refused(path, None)
    assert "its signed head counts 7" in message and "3 record(s) missing" in message


def test_a_tail_cut_under_an_older_genuine_head_put_back_shows_through_the_store(
    tmp_path: Path,
) -> None:
    path, heads = _stopped(tmp_path, 3)
    old_head, old_size = _head(path).read_bytes(), path.stat().st_size
    log = _started(path, heads)
    for i in range(3):
        log.append(3000.0 + i, "KEY_RELEASE", {})
    log.close()
    with open(path, "r+b") as handle:
        handle.truncate(old_size)
    _head(path).write_bytes(old_head)
    assert verify(path, mac).intact  # the files alone cannot tell
    message = _refused(path, heads)
    assert "the state store's head counts 8" in message and "4 record(s) missing" in message


@pytest.mark.parametrize("left", ["both", "head file", "store"])
def test_a_deleted_log_stops_the_start_while_a_head_exists(tmp_path: Path, left: str) -> None:
    path, heads = _stopped(tmp_path, 6)
    path.unlink()
    if left == "store":
        _head(path).unlink()
    message = _refused(path, heads if left != "head file" else None)
    assert "is missing" in message and "7 record(s) missing" in message


def test_an_emptied_log_stops_the_start(tmp_path: Path) -> None:
    path, heads = _stopped(tmp_path, 2)
    path.write_bytes(b"")
    assert "is empty" in _refused(path, heads)


def test_a_head_that_names_a_record_this_log_does_not_hold_stops_the_start(
    tmp_path: Path,
) -> None:
    """Another genuine log (same key) put in the place of this one."""
    path, heads = _stopped(tmp_path / "a", 2)
    other, _ = _stopped(tmp_path / "b", 6)
    path.write_bytes(other.read_bytes())
    _head(path).write_bytes(_head(other).read_bytes())
    assert "does not hold record 3" in _refused(path, heads)


# --- a head file that does not verify ---------------------------------------------------------


def _forged(count: int, tag: bytes) -> bytes:
    return canonical({"count": count, "mac": tag.hex(), "sig": os.urandom(32).hex()})


@pytest.mark.parametrize(
    "kind", ["forged", "unsigned", "other key", "garbage", "binary", "empty", "not a dict"]
)
@pytest.mark.parametrize("store", [False, True])
def test_a_head_file_that_does_not_verify_after_a_tail_cut_stops_the_start(
    tmp_path: Path, kind: str, store: bool
) -> None:
    path, heads = _stopped(tmp_path, 6)
    _cut(path, 4)
    tag = bytes.fromhex(_records(path)[-1]["mac"])
    content = {
        "forged": _forged(4, tag),
        "unsigned": canonical({"count": 4, "mac": tag.hex()}),
        "other key": canonical(
            {"count": 4, "mac": tag.hex(), "sig": other_mac(head_input(4, tag)).hex()}
        ),
        "garbage": b"count=4 mac=" + tag.hex().encode(),
        "binary": bytes(range(256)),
        "empty": b"",
        "not a dict": b"[4]",
    }[kind]
    _head(path).write_bytes(content)
    message = _refused(path, heads if store else None)
    assert "does not verify" in message
    if store:
        assert "3 record(s) missing" in message


# --- whatever the log holds -------------------------------------------------------------------

GARBAGE = {
    "text": b"hello world\n",
    "binary": bytes(range(256)).replace(b"\n", b"") + b"\n",
    "invalid utf-8": b'{"event":"\xff\xfe","seq":2}\n',
    "deep nesting": b"[" * 200_000 + b"\n",
    "huge line": b'{"event":"' + b"A" * 5_000_000 + b'"}\n',
    "a list": b"[]\n",
    "a string": b'"record"\n',
    "a number": b"2\n",
    "no mac": b'{"event":"X","fields":{},"prev":"00","seq":2,"time":1.0}\n',
    "mac not hex": b'{"event":"X","fields":{},"mac":"zz","prev":"00","seq":2,"time":1.0}\n',
    "mac a number": b'{"event":"X","fields":{},"mac":7,"prev":"00","seq":2,"time":1.0}\n',
    "nul bytes": b"\x00" * 64 + b"\n",
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
@pytest.mark.parametrize("where", ["after good records", "alone"])
def test_whatever_the_log_holds_a_start_fails_with_one_clear_line(
    tmp_path: Path, kind: str, where: str
) -> None:
    if where == "alone":
        path, heads = tmp_path / "audit.log", None
        path.write_bytes(GARBAGE[kind])
    else:
        path, store = _stopped(tmp_path, 3)
        heads = store
        with open(path, "ab") as handle:
            handle.write(GARBAGE[kind])
    message = _refused(path, heads)
    position = 1 if where == "alone" else 5
    assert f"record {position} of {position} in the audit log" in message
    assert "does not verify" in message


def test_an_hsm_outage_at_start_is_not_taken_for_tampering(tmp_path: Path) -> None:
    path, heads = _stopped(tmp_path, 2)

    def gone(data: bytes) -> bytes:
        raise HsmUnavailable("token removed")

    with pytest.raises(HsmUnavailable):
        AuditLog(path, gone, head_store=heads)


def test_heads_left_behind_by_a_crash_before_they_moved_are_brought_forward(
    tmp_path: Path,
) -> None:
    path, heads = _stopped(tmp_path, 1)
    stale, stale_file = heads.head, _head(path).read_bytes()
    log = _started(path, heads)
    log.append(2.0, "B", {})
    log.close()
    # the crash hit between the log's fsync and the heads' commit
    heads.head = stale
    _head(path).write_bytes(stale_file)
    log = _started(path, heads)
    log.close()
    assert heads.head is not None and heads.head[0] == 5
    assert verify(path, mac, kept=heads.head).intact


# --- accept-gap -------------------------------------------------------------------------------


def test_a_cut_tail_is_not_intact_until_the_gap_is_accepted_then_the_start_reports_it_once(
    tmp_path: Path,
) -> None:
    path, heads = _stopped(tmp_path, 6)
    _cut(path, 4)
    result = verify(path, mac, kept=heads.head)
    assert (result.intact, result.first_bad, result.gaps) == (False, 5, ())
    gap = accept_gap(path, mac, heads, REASON, 5000.0)
    assert (gap.first, gap.last, gap.record, gap.missing, gap.reason) == (5, 7, 8, 3, REASON)
    assert heads.head is not None and heads.head[0] == 8
    record = _records(path)[-1]
    assert record["event"] == "AUDIT_GAP" and record["seq"] == 8 and record["time"] == 5000.0
    assert record["fields"]["first"] == 5 and record["fields"]["last"] == 7
    assert record["fields"]["store_head"] == 7 and record["fields"]["head_file"] == 7
    assert record["prev"] == _records(path)[3]["mac"]  # chained to the last good record
    result = verify(path, mac, kept=heads.head)
    assert (result.intact, result.records, result.gaps) == (True, 5, (gap,))

    log = _started(path, heads)
    assert log.start_findings == StartFindings(0, (gap,))
    assert log.append(6000.0, "KEY_RELEASE", {}) == 10
    assert log.count == 7
    log.close()
    assert _records(path)[5]["fields"] == {"previous_start": 1, "accepted_gaps": 1}
    log = _started(path, heads)  # the next start: already reported
    log.close()
    assert log.start_findings == StartFindings(0, ())
    assert verify(path, mac, kept=heads.head).gaps == (gap,)


def test_two_gaps_accepted_before_one_start_are_both_reported(tmp_path: Path) -> None:
    path, heads = _stopped(tmp_path, 6)
    _cut(path, 4)
    first = accept_gap(path, mac, heads, REASON, 5000.0)
    _cut(path, 4)
    second = accept_gap(path, mac, heads, "again", 5001.0)
    assert (second.first, second.last, second.record) == (5, 8, 9)
    log = _started(path, heads)
    log.close()
    assert log.start_findings.accepted_gaps == (second,)  # the first one was cut with the tail
    assert first.record not in {r["seq"] for r in _records(path)}


def test_accept_gap_after_the_log_was_deleted_starts_the_chain_again(tmp_path: Path) -> None:
    path, heads = _stopped(tmp_path, 6)
    path.unlink()
    gap = accept_gap(path, mac, heads, REASON, 5000.0)
    assert (gap.first, gap.last, gap.record) == (1, 7, 8)
    log = _started(path, heads)
    log.close()
    assert [r["event"] for r in _records(path)] == ["AUDIT_GAP", "NODE_STARTED"]
    assert verify(path, mac, kept=heads.head).intact


def test_accept_gap_moves_records_that_do_not_verify_aside_and_names_them_missing(
    tmp_path: Path,
) -> None:
    path, heads = _stopped(tmp_path, 6)
    lines = _lines(path)
    lines[2] = lines[2].replace(b"u1", b"u9")
    path.write_bytes(b"".join(lines))
    assert "record 3 of 7" in _refused(path, heads)
    gap = accept_gap(path, mac, heads, REASON, 5000.0)
    assert (gap.first, gap.last, gap.record) == (3, 7, 8)
    assert (tmp_path / "audit.log.rejected-8").read_bytes() == b"".join(lines[2:])
    assert (tmp_path / "audit.log.rejected-8").stat().st_mode & 0o077 == 0
    log = _started(path, heads)
    log.close()
    assert verify(path, mac, kept=heads.head).intact


def test_accept_gap_after_a_torn_line_and_a_cut_keeps_the_torn_bytes_aside(
    tmp_path: Path,
) -> None:
    path, heads = _stopped(tmp_path, 6)
    _cut(path, 4)
    with open(path, "ab") as handle:
        handle.write(b'{"event":"KEY_RE')
    gap = accept_gap(path, mac, heads, REASON, 5000.0)
    assert _records(path)[-1]["fields"]["torn_bytes"] == 16
    assert (tmp_path / f"audit.log.rejected-{gap.record}").read_bytes() == b'{"event":"KEY_RE'
    log = _started(path, heads)
    log.close()
    assert log.start_findings == StartFindings(0, (gap,))


def test_accept_gap_for_a_forged_head_over_a_whole_log_names_no_missing_record(
    tmp_path: Path,
) -> None:
    path, _ = _stopped(tmp_path, 6)
    heads = Heads()  # nothing in the store: the head file was the only head
    forged = _forged(7, bytes(32))
    _head(path).write_bytes(forged)
    assert "does not verify" in _refused(path, heads)
    gap = accept_gap(path, mac, heads, REASON, 5000.0)
    assert (gap.first, gap.last, gap.record, gap.missing) == (8, 7, 8, 0)
    assert (tmp_path / "audit.log.head.rejected-8").read_bytes() == forged
    log = _started(path, heads)
    log.close()
    assert log.start_findings.accepted_gaps == (gap,)
    assert verify(path, mac, kept=heads.head).intact


def test_a_head_older_than_an_accepted_gap_does_not_stop_the_start(tmp_path: Path) -> None:
    path, heads = _stopped(tmp_path, 6)
    old_head = _head(path).read_bytes()
    _cut(path, 4)
    accept_gap(path, mac, heads, REASON, 5000.0)
    _head(path).write_bytes(old_head)  # names record 7, which the gap says is missing
    _started(path, heads).close()


def test_accept_gap_refuses_when_nothing_is_wrong(tmp_path: Path) -> None:
    path, heads = _stopped(tmp_path, 2)
    with open(path, "ab") as handle:
        handle.write(b'{"event"')
    before = _files(path)
    with pytest.raises(KmsError, match=r"nothing to accept.*torn last line of 8 bytes"):
        accept_gap(path, mac, heads, REASON, 5000.0)
    assert _files(path) == before


def test_accept_gap_refuses_while_a_writer_holds_the_log(tmp_path: Path) -> None:
    path, heads = _stopped(tmp_path, 2)
    log = _started(path, heads)
    try:
        _cut(path, 2)
        with pytest.raises(AuditUnavailable, match="in use"):
            accept_gap(path, mac, heads, REASON, 5000.0)
    finally:
        log.close()


@pytest.mark.parametrize("reason", ["", "   ", "two\nlines", "x" * 501])
def test_accept_gap_needs_a_reason_on_one_line(tmp_path: Path, reason: str) -> None:
    path, heads = _stopped(tmp_path, 6)
    _cut(path, 4)
    with pytest.raises(KmsError, match="reason"):
        accept_gap(path, mac, heads, reason, 5000.0)


# --- a gap record must say exactly what it skips ----------------------------------------------


def _with_gap(tmp_path: Path, seq: int, fields: dict[str, Any]) -> Path:
    path, _ = _stopped(tmp_path, 3)
    last = bytes.fromhex(_records(path)[-1]["mac"])
    line, tag = make_record(seq, 5000.0, "AUDIT_GAP", fields, last, mac)
    with open(path, "ab") as handle:
        handle.write(line)
    _head(path).write_bytes(head_bytes(seq, tag, mac))
    return path


def test_a_gap_record_that_names_its_seq_jump_verifies(tmp_path: Path) -> None:
    path = _with_gap(tmp_path, 9, {"first": 5, "last": 8, "reason": "r"})
    result = verify(path, mac)
    assert result.intact and [(g.first, g.last, g.record) for g in result.gaps] == [(5, 8, 9)]


@pytest.mark.parametrize(
    ("seq", "fields"),
    [
        (9, {"first": 5, "last": 7, "reason": "r"}),  # jumps further than it says
        (9, {"first": 6, "last": 8, "reason": "r"}),  # does not start after the record before
        (9, {"first": 5, "last": 9, "reason": "r"}),  # names itself
        (3, {"first": 5, "last": 2, "reason": "r"}),  # a range backwards: seq 3 again
        (9, {"first": 5, "last": 8}),  # no reason
        (9, {"first": 5, "last": 8.0, "reason": "r"}),  # not a whole number
    ],
)
def test_a_gap_record_that_does_not_name_its_seq_jump_does_not_verify(
    tmp_path: Path, seq: int, fields: dict[str, Any]
) -> None:
    path = _with_gap(tmp_path, seq, fields)
    result = verify(path, mac)
    assert (result.intact, result.first_bad, result.gaps) == (False, 5, ())


def test_a_seq_jump_without_a_gap_record_does_not_verify(tmp_path: Path) -> None:
    path, _ = _stopped(tmp_path, 3)
    last = bytes.fromhex(_records(path)[-1]["mac"])
    line, tag = make_record(6, 5000.0, "KEY_RELEASE", {}, last, mac)
    with open(path, "ab") as handle:
        handle.write(line)
    _head(path).write_bytes(head_bytes(6, tag, mac))
    result = verify(path, mac)
    assert (result.intact, result.first_bad) == (False, 5) and "record 5 was" in result.detail


def test_a_record_whose_seq_is_true_is_not_record_1(tmp_path: Path) -> None:
    """JSON true equals 1 in Python: a seq must be a whole number, not a boolean."""
    path = tmp_path / "audit.log"
    record = {"event": "X", "fields": {}, "prev": bytes(32).hex(), "seq": True, "time": 1.0}
    tag = mac(canonical(record))
    path.write_bytes(canonical({**record, "mac": tag.hex()}) + b"\n")
    assert verify(path, mac).first_bad == 1
