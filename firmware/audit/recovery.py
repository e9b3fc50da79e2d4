"""What a start finds in an audit chain, and the operator's way past a gap (`accept-gap`).

The rules hold for every medium (firmware/audit/medium.py) and, in a cluster, per chain: each
node's start inspects only its own chain, and `accept-gap --chain ID` acknowledges one chain.
The messages name the chain as its medium does ("the audit log PATH", "the audit chain ID").

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
  verifies, last = the highest of the genuine signed head's count, the store's count and the
  seqs the rejected records would have had. Its seq is `last + 1`, above every head, so no
  stored head is ever lowered; it chains to the last record that verifies. Records that do not
  verify and a torn tail are set aside first, and a signed head that does not verify (a file's
  `<log>.rejected-<seq>` and `<log>.head.rejected-<seq>`, 0600; PostgreSQL's audit_rejected
  rows): evidence for the investigation. Then the store's head and the signed head name the gap
  record. The next start reports the gap (the node raises TAMPER).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
)
from firmware.audit.filemedium import HINT, FileMedium
from firmware.audit.medium import Batch, Medium, Stored
from firmware.core.errors import AuditIntegrityError, KmsError
from firmware.core.ports import HeadStore

__all__ = ["HINT", "Found", "accept", "accept_gap", "inspect"]

MAX_REASON = 500


class Names(Protocol):
    """How messages name a chain (every Medium has these)."""

    where: str
    head_where: str
    hint: str


@dataclass(frozen=True)
class Found:
    """The chain and its heads as a start finds them."""

    stored: Stored
    scan: Scan
    head: Head
    kept: tuple[int, bytes] | None  # the state store's head
    problem: str  # why the start is refused, one line; "" when it may go on
    hint: str

    @property
    def highest(self) -> int:
        """The highest seq any trusted head names."""
        return max(self.head.count if self.head.genuine else 0, self.kept[0] if self.kept else 0)

    def error(self) -> AuditIntegrityError:
        return AuditIntegrityError(f"{self.problem}; {self.hint}")


def inspect(stored: Stored, mac: Mac, names: Names) -> Found:
    """Decide on what a medium holds; never raises for what it holds."""
    head = parse_head(stored.head, mac)
    kept = stored.kept if stored.kept is not None and stored.kept[0] != 0 else None
    want = {n for n in (head.count if head.genuine else 0, kept[0] if kept else 0) if n}
    found = scan(stored.lines, mac, want, stored.keys)
    partial = Found(stored, found, head, kept, "", names.hint)
    return Found(stored, found, head, kept, _problem(partial, names), names.hint)


def _problem(f: Found, names: Names) -> str:
    s, head, log, lines = f.scan, f.head, names.where, f.stored.lines
    store = f"the state store's head counts {f.kept[0]}" if f.kept else ""
    if not lines:
        if not head.present and f.kept is None:
            return ""  # a new chain
        counts = [f"its signed head counts {head.count}" if head.genuine else "", store]
        if head.present and not head.genuine:
            counts[0] = "its head file exists (and does not verify)"
        missing = f"{f.highest} record(s) missing" if f.highest else "records missing"
        what = (
            "missing"
            if not f.stored.exists
            else "empty"
            if not f.stored.torn
            else "without a whole record"
        )
        return f"{log} is {what} but {' and '.join(c for c in counts if c)}: {missing}"
    if s.first_bad:
        return (
            f"record {s.first_bad} of {s.lines} in {log} does not verify (changed,"
            f" removed, reordered or not a record): {s.lines - s.good} record(s) from there on"
            " cannot be trusted"
        )
    if head.present and not head.genuine:
        if f.kept and f.kept[0] > s.seq:
            missing = f"{store}: {f.kept[0] - s.seq} record(s) missing at the end"
        else:
            missing = "cannot tell how many records are missing"
        return f"{names.head_where} does not verify (forged, damaged or not a head); {missing}"
    if f.highest > s.seq:
        counts = [f"its signed head counts {head.count}" if head.genuine else "", store]
        return (
            f"{log} ends at record {s.seq} but"
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
                f"{log} does not hold record {count} as {name} names it"
                " (another log put in its place?)"
            )
    return ""


def _describe(head: Head) -> str | int:
    if not head.present:
        return "absent"
    return head.count if head.genuine else "does not verify"


def accept(medium: Medium, mac: Mac, reason: str, now: float) -> Gap:
    """Acknowledge what `inspect` finds wrong with `medium`'s chain with a signed AUDIT_GAP
    record (module rules). Takes the chain's writer lock; closes the medium."""
    reason = reason.strip()
    if not 0 < len(reason) <= MAX_REASON or not reason.isprintable():
        raise KmsError(f"the reason must be 1 to {MAX_REASON} printable characters on one line")
    try:
        medium.lock()
        found = inspect(medium.read(), mac, medium)
        if not found.problem:
            torn = found.stored.torn
            raise KmsError(
                f"nothing to accept: {medium.where} agrees with its heads"
                + (f" (the next start cuts a torn last line of {torn} bytes)" if torn else "")
            )
        s = found.scan
        rejected = s.lines - s.good
        first, last = s.seq + 1, max(found.highest, s.seq + rejected)
        seq = last + 1
        fields = {
            "first": first,
            "last": last,
            "reason": reason,
            "found": found.problem,
            "log_last": s.seq,
            "head_file": _describe(found.head),
            "store_head": found.kept[0] if found.kept else None,
            "rejected_lines": rejected,
            "torn_bytes": found.stored.torn,
        }
        line, tag = make_record(seq, now, GAP_EVENT, fields, s.mac, mac)
        gap = Batch(seq, (line,), tag, head_bytes(seq, tag, mac))
        medium.rewrite(s.good, gap, found.head.present and not found.head.genuine)
        return Gap(first, last, seq, round(now, 6), reason)
    finally:
        medium.close()


def accept_gap(path: Path, mac: Mac, heads: HeadStore, reason: str, now: float) -> Gap:
    """`accept` for the log file at `path` whose state store head is in `heads`."""
    return accept(FileMedium(path, heads), mac, reason, now)
