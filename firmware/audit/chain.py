"""The audit log's format and its one reader: records, the hash chain, gaps and the signed head.

Format: one JSON object per line, keys sorted, no spaces (the canonical form that is MACed):
    {"event": "...", "fields": {...}, "prev": "<hex mac of the record before>", "seq": n,
     "time": t}
plus "mac": HMAC-SHA-256 (in the HSM) over the canonical form without "mac". Record 1 chains to
32 zero bytes. Beside the log, `<log>.head` holds the signed checkpoint {"count", "mac", "sig"}
(count = seq of the last record, mac = its MAC, sig = HMAC over "kmsnode-audit-head" || count ||
mac).

Rules:
- Every record's seq is the one before plus one, except an AUDIT_GAP record: its fields name
  the missing range `first..last`; `first` must be the seq after the record before it and its
  own seq `last + 1` (an empty range, `last == first - 1`, acknowledges a head that did not
  verify while no record is known to be missing). Only the HSM key makes a record verify, so
  only an operator's `kmsnode audit accept-gap` can acknowledge a gap.
- A record must be byte for byte the canonical form that was MACed (a flipped byte shows even
  when it would parse to the same values, e.g. the case of a hex digit).
- Records stored under a key (PostgreSQL rows, keyed by seq) must carry the seq they are stored
  under: `scan(keys=...)` treats any other as a record that does not verify.
- `scan` never raises for what a file holds (garbage, binary, invalid UTF-8, deep nesting, huge
  lines); it raises only what the MAC function raises (e.g. HsmUnavailable), so an HSM outage is
  never reported as tampering.
- "Since the last start": the writer appends a NODE_STARTED record at every start; the gaps a
  start reports are the AUDIT_GAP records after the last NODE_STARTED record.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GENESIS = bytes(32)
HEAD_CONTEXT = b"kmsnode-audit-head"
GAP_EVENT = "AUDIT_GAP"
START_EVENT = "NODE_STARTED"

Mac = Callable[[bytes], bytes]


def canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def make_record(
    seq: int, time: float, event: str, fields: Mapping[str, Any], prev: bytes, mac: Mac
) -> tuple[bytes, bytes]:
    """(the record's line with its newline, its MAC)."""
    record: dict[str, Any] = {
        "seq": seq,
        "time": round(time, 6),
        "event": event,
        "fields": dict(fields),
        "prev": prev.hex(),
    }
    tag = mac(canonical(record))
    record["mac"] = tag.hex()
    return canonical(record) + b"\n", tag


@dataclass(frozen=True)
class Gap:
    """An acknowledged gap: the records `first..last` are missing (none when last < first)."""

    first: int
    last: int
    record: int  # seq of the AUDIT_GAP record that acknowledges it
    time: float  # when the operator accepted it
    reason: str  # the operator's words

    @property
    def missing(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Scan:
    """What the lines of a log hold, read from the first line on."""

    lines: int
    first_bad: int  # 1-based position of the first record that does not verify; 0: none
    seq: int  # seq of the last record that verifies (0: none)
    mac: bytes = field(repr=False)  # its MAC (GENESIS: none)
    good: int  # records that verify (the first_bad - 1 first ones, or all)
    gaps: tuple[Gap, ...]
    last_start: int  # seq of the last NODE_STARTED record (0: none)
    macs: Mapping[int, bytes] = field(repr=False)  # MAC of each asked-for seq found

    @property
    def gaps_since_start(self) -> tuple[Gap, ...]:
        return tuple(g for g in self.gaps if g.record > self.last_start)

    def upto(self, seq: int) -> int:
        """How many of the verified records have a seq of at most `seq` (so the record `seq`,
        when there, is at that 1-based position in the file)."""
        inside = sum(seq - g.first + 1 for g in self.gaps if g.first <= seq <= g.last)
        return seq - sum(g.missing for g in self.gaps if g.record <= seq) - inside

    def covers(self, seq: int, mac: bytes) -> bool:
        """True when the verified records hold the record a head names (its seq must have been
        in `want`), or an acknowledged gap names it as missing (a head older than the gap)."""
        if seq == 0:
            return True
        if seq in self.macs:
            return hmac.compare_digest(self.macs[seq], mac)
        return seq <= self.seq and any(g.first <= seq <= g.last for g in self.gaps)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _gap(record: Mapping[str, Any], expected: int) -> Gap | None:
    """The gap an AUDIT_GAP record acknowledges, when its seq jump is the range it names."""
    fields = record.get("fields")
    if not isinstance(fields, dict):
        return None
    first, last, seq = _int(fields.get("first")), _int(fields.get("last")), _int(record["seq"])
    reason, time = fields.get("reason"), record.get("time")
    if first is None or last is None or seq is None or not isinstance(reason, str):
        return None
    if first != expected or last < first - 1 or seq != last + 1:
        return None
    return Gap(first, last, seq, float(time) if isinstance(time, int | float) else 0.0, reason)


def split(data: bytes) -> tuple[list[bytes], int]:
    """(the complete lines of a log, without their newlines; bytes after the last newline)."""
    keep = data.rfind(b"\n") + 1
    return data[:keep].split(b"\n")[:-1], len(data) - keep


def scan(
    lines: Sequence[bytes],
    mac: Mac,
    want: Collection[int] = (),
    keys: Sequence[int] | None = None,
) -> Scan:
    """Check every record's chain, MAC, form and seq; stop at the first that does not verify.
    `want`: seqs whose MACs to return (the heads to compare); `keys`: the seq each line is
    stored under, which must be its own."""
    prev, seq, last_start = GENESIS, 0, 0
    gaps: list[Gap] = []
    macs: dict[int, bytes] = {}
    for position, line in enumerate(lines, start=1):
        gap = None
        try:
            # Anything but a JSON object with a hex "mac" raises here: a list's pop a TypeError,
            # other values' an AttributeError, invalid UTF-8 a ValueError, deep nesting a
            # RecursionError.
            record = json.loads(line)
            claimed = bytes.fromhex(record.pop("mac"))
            number = _int(record.get("seq"))
            ok = (
                number is not None
                and (keys is None or keys[position - 1] == number)
                and record.get("prev") == prev.hex()
                and isinstance(record.get("event"), str)
                and hmac.compare_digest(mac(canonical(record)), claimed)
                # byte for byte as written: hex case, escapes, number forms cannot differ
                and canonical({**record, "mac": claimed.hex()}) == line
            )
            if ok and record["event"] == GAP_EVENT:
                gap = _gap(record, seq + 1)
                ok = gap is not None
            elif ok:
                ok = number == seq + 1
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            ok = False  # not a record
        if not ok:
            return Scan(
                len(lines), position, seq, prev, position - 1, tuple(gaps), last_start, macs
            )
        if gap is not None:
            gaps.append(gap)
        seq, prev = int(record["seq"]), claimed
        if record["event"] == START_EVENT:
            last_start = seq
        if seq in want:
            macs[seq] = claimed
    return Scan(len(lines), 0, seq, prev, len(lines), tuple(gaps), last_start, macs)


# --- the signed head --------------------------------------------------------------------------


def head_input(count: int, mac: bytes) -> bytes:
    return HEAD_CONTEXT + count.to_bytes(8, "big") + mac


def head_bytes(count: int, mac: bytes, sign: Mac) -> bytes:
    return canonical({"count": count, "mac": mac.hex(), "sig": sign(head_input(count, mac)).hex()})


@dataclass(frozen=True)
class Head:
    """The head file as found: absent, present but not verifying, or genuine."""

    present: bool
    genuine: bool = False
    count: int = 0
    mac: bytes = field(default=GENESIS, repr=False)


ABSENT = Head(present=False)


def parse_head(data: bytes | None, mac: Mac) -> Head:
    """The head checkpoint in `data` (None: no file). Never raises for what the file holds."""
    if data is None:
        return ABSENT
    try:
        head = json.loads(data)
        count, head_mac = _int(head["count"]), bytes.fromhex(head["mac"])
        sig = bytes.fromhex(head["sig"])
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return Head(present=True)
    if count is None or count < 0 or count >= 2**63 or len(head_mac) != len(GENESIS):
        return Head(present=True)
    if not hmac.compare_digest(mac(head_input(count, head_mac)), sig):
        return Head(present=True)
    return Head(present=True, genuine=True, count=count, mac=head_mac)
