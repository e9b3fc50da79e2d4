"""What a start finds in the audit log, and the operator's way past a gap (`accept-gap`).

Rules (a start, `inspect`, decides; it changes nothing):
- Bytes after the last newline are a torn last line: a write that never finished (crash or full
  disk), so never acknowledged. The start cuts them (the writer then records AUDIT_RECOVERED with
  the number of bytes cut, never their content).
- The start is refused (AuditIntegrityError, one line: what is wrong, how many records are
  missing, and how to go on) when
  - a record does not verify (changed, removed, reordered, garbage, binary, not UTF-8);
  - the log is missing or empty while a head exists (the head file, in any form, or the store's);
  - the head file exists but does not verify (forged, unsigned, damaged);
  - the log ends before the record its signed head or the store's head names (a tail cut while
    the node was stopped, perhaps with an older genuine head file put back), or does not hold the
    record a head names (another log put in its place).
  A head older than the log (a crash between the log's fsync and the heads) is not a problem: the
  writer brings it forward. A head that names a record inside an acknowledged gap is older than
  that gap and is not a problem either.
- `accept_gap` (the node stopped: it takes the log's writer lock) writes one signed AUDIT_GAP
  record naming the missing range `first..last`: first = the seq after the last record that
  verifies, last = the highest of the genuine head file's count, the store's count and the seqs
  the rejected lines would have had. Its seq is `last + 1`, above every head, so no stored head
  is ever lowered; it chains to the last record that verifies. Lines that do not verify and a
  torn tail are moved to `<log>.rejected-<seq>` first, a head file that does not verify to
  `<log>.head.rejected-<seq>` (evidence for the investigation, 0600). Then the store's head and
  the head file name the gap record. The next start reports the gap (the node raises TAMPER).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from firmware.audit.chain import (
    GAP_EVENT,
    Gap,
    Head,
    Mac,
    Scan,
    head_bytes,
    make_record,
    parse_head,
    scan,
    split,
)
from firmware.audit.files import head_path, lock, read_optional, write_all, write_head
from firmware.core.errors import AuditIntegrityError, AuditUnavailable, KmsError
from firmware.core.ports import HeadStore

HINT = "run `kmsnode audit accept-gap --config FILE` after investigating"
MAX_REASON = 500


@dataclass(frozen=True)
class Found:
    """The log and its heads as a start finds them."""

    path: Path
    lines: list[bytes] = field(repr=False)  # the complete lines
    size: int  # bytes of the complete lines
    torn: int  # bytes after the last newline
    scan: Scan
    head: Head
    kept: tuple[int, bytes] | None  # the state store's head
    problem: str  # why the start is refused, one line; "" when it may go on

    @property
    def highest(self) -> int:
        """The highest seq any trusted head names."""
        return max(self.head.count if self.head.genuine else 0, self.kept[0] if self.kept else 0)

    def error(self) -> AuditIntegrityError:
        return AuditIntegrityError(f"{self.problem}; {HINT}")


def read_log(path: Path) -> bytes | None:
    try:
        return read_optional(path)
    except OSError as exc:
        raise AuditUnavailable(f"cannot read the audit log {path}: {exc.strerror}") from None


def inspect(path: Path, mac: Mac, kept: tuple[int, bytes] | None) -> Found:
    """Read the log and its heads; never raises for what the files hold."""
    data = read_log(path)
    lines, torn = split(data or b"")
    try:
        head = parse_head(read_optional(head_path(path)), mac)
    except OSError:
        head = Head(present=True)  # there but unreadable: it does not verify
    if kept is not None and kept[0] == 0:
        kept = None
    want = {n for n in (head.count if head.genuine else 0, kept[0] if kept else 0) if n}
    found = scan(lines, mac, want)
    size = len(data or b"") - torn
    partial = Found(path, lines, size, torn, found, head, kept, "")
    return Found(path, lines, size, torn, found, head, kept, _problem(partial, data is not None))


def _problem(f: Found, exists: bool) -> str:
    s, head, log = f.scan, f.head, f.path
    store = f"the state store's head counts {f.kept[0]}" if f.kept else ""
    if not f.lines:
        if not head.present and f.kept is None:
            return ""  # a new log
        counts = [f"its signed head counts {head.count}" if head.genuine else "", store]
        if head.present and not head.genuine:
            counts[0] = "its head file exists (and does not verify)"
        missing = f"{f.highest} record(s) missing" if f.highest else "records missing"
        what = "missing" if not exists else "empty" if not f.torn else "without a whole record"
        return (
            f"the audit log {log} is {what} but {' and '.join(c for c in counts if c)}: {missing}"
        )
    if s.first_bad:
        return (
            f"record {s.first_bad} of {s.lines} in the audit log {log} does not verify (changed,"
            f" removed, reordered or not a record): {s.lines - s.good} record(s) from there on"
            " cannot be trusted"
        )
    if head.present and not head.genuine:
        if f.kept and f.kept[0] > s.seq:
            missing = f"{store}: {f.kept[0] - s.seq} record(s) missing at the end"
        else:
            missing = "cannot tell how many records are missing"
        return (
            f"the signed head {head_path(log)} does not verify (forged, damaged or not a head);"
            f" {missing}"
        )
    if f.highest > s.seq:
        counts = [f"its signed head counts {head.count}" if head.genuine else "", store]
        return (
            f"the audit log {log} ends at record {s.seq} but"
            f" {' and '.join(c for c in counts if c)}: {f.highest - s.seq} record(s) missing"
            " at the end (cut while the node was stopped?)"
        )
    for name, named in (("its signed head", head), ("the state store's head", f.kept)):
        if isinstance(named, Head):
            count, tag = (named.count, named.mac) if named.genuine else (0, b"")
        elif named is not None:
            count, tag = named
        else:
            continue
        if not s.covers(count, tag):
            return (
                f"the audit log {log} does not hold record {count} as {name} names it"
                " (another log put in its place?)"
            )
    return ""


def _describe(head: Head) -> str | int:
    if not head.present:
        return "absent"
    return head.count if head.genuine else "does not verify"


def _keep_aside(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def accept_gap(path: Path, mac: Mac, heads: HeadStore, reason: str, now: float) -> Gap:
    """Acknowledge what `inspect` found wrong with a signed AUDIT_GAP record (module rules)."""
    reason = reason.strip()
    if not 0 < len(reason) <= MAX_REASON or not reason.isprintable():
        raise KmsError(f"the reason must be 1 to {MAX_REASON} printable characters on one line")
    path = Path(path)
    held = lock(path)
    try:
        found = inspect(path, mac, heads.audit_head())
        if not found.problem:
            raise KmsError(
                "nothing to accept: the audit log agrees with its heads"
                + (
                    f" (the next start cuts a torn last line of {found.torn} bytes)"
                    if found.torn
                    else ""
                )
            )
        s = found.scan
        good = sum(len(line) + 1 for line in found.lines[: s.good])
        rejected = s.lines - s.good
        first, last = s.seq + 1, max(found.highest, s.seq + rejected)
        seq = last + 1
        data = read_log(path) or b""
        if good < len(data):
            _keep_aside(path.with_name(f"{path.name}.rejected-{seq}"), data[good:])
        if found.head.present and not found.head.genuine:
            old = read_optional(head_path(path))
            _keep_aside(path.with_name(f"{path.name}.head.rejected-{seq}"), old or b"")
        fields = {
            "first": first,
            "last": last,
            "reason": reason,
            "found": found.problem,
            "log_last": s.seq,
            "head_file": _describe(found.head),
            "store_head": found.kept[0] if found.kept else None,
            "rejected_lines": rejected,
            "torn_bytes": found.torn,
        }
        line, tag = make_record(seq, now, GAP_EVENT, fields, s.mac, mac)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, good)
            os.lseek(fd, good, os.SEEK_SET)
            write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        heads.set_audit_head(seq, tag)  # above every head found: never lowers the stored one
        write_head(path, head_bytes(seq, tag, mac))
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the log (if it was missing), the head and the kept files
        finally:
            os.close(dir_fd)
        return Gap(first, last, seq, round(now, 6), reason)
    finally:
        os.close(held)
