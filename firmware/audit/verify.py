"""Verification of an audit log (`kmsnode audit verify`, AdminService.VerifyAudit).

Rules:
- `verify` names the first record (1-based position in the file) that was changed, removed,
  reordered or is missing; `first_bad == 0` when the log is intact. It never raises for what the
  files hold, only for what the MAC raises (an HSM outage is not tampering).
- An AUDIT_GAP record whose MAC and chain verify and whose seq jump is the range it names is an
  acknowledged gap: it is listed in `gaps` and does not make the log not intact. Before the
  operator accepted it, the same cut log is not intact.
- With the state store's head (`kept`), the log must still hold the record it names (or name it
  inside an acknowledged gap): a tail cut shows even when an older, genuine head file was put back.
- A live log is verified against `AuditLog.snapshot()`: the file's size and signed head taken
  between two commits (a commit writes records, fsyncs, prepares the head, counts it in the store
  and replaces the head, all under the commit lock), plus the writer's own last seq and MAC held
  in memory. Verification then never sees a half-written batch or a head newer than the records
  it read, and a tail cut while the node runs is found even if an older head file was put back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from firmware.audit.chain import Gap, Mac, parse_head, scan, split
from firmware.audit.files import head_path, read_optional


@dataclass(frozen=True)
class VerifyResult:
    intact: bool
    records: int  # lines in the log
    first_bad: int  # 0 when intact
    detail: str = ""
    gaps: tuple[Gap, ...] = ()  # acknowledged gaps (AUDIT_GAP records that verify)


@dataclass(frozen=True)
class Snapshot:
    """A consistent view of a live log (see the module rules)."""

    size: int  # bytes of the log file after the last commit
    head: bytes = field(repr=False)  # the signed head file's content then (b"" if absent)
    seq: int  # seq of the last record the writer made durable (0: none)
    last: bytes = field(repr=False)  # its MAC (GENESIS when none)


def verify(
    path: Path,
    mac: Mac,
    snapshot: Snapshot | None = None,
    kept: tuple[int, bytes] | None = None,
) -> VerifyResult:
    """Check every record's chain, MAC and seq, and the signed head (module rules).

    With `snapshot` (of the live writer of `path`), only the bytes it counted are read, its head
    is used, and every record the writer made durable must still be there. With `kept` (the
    head from the state store), the log must still hold the record it names."""
    path = Path(path)
    try:
        if snapshot is not None:
            with open(path, "rb") as handle:
                data = handle.read(snapshot.size)
            head_data = snapshot.head or None
        else:
            data = read_optional(path) or b""
            head_data = read_optional(head_path(path))
    except OSError as exc:
        return VerifyResult(False, 0, 1, f"cannot read the log: {exc.strerror}")
    lines, torn = split(data)
    head = parse_head(head_data, mac)
    heads = [kept, (snapshot.seq, snapshot.last) if snapshot is not None else None]
    want = {h[0] for h in heads if h is not None} | ({head.count} if head.genuine else set())
    s = scan(lines, mac, want)
    n = s.lines

    def bad(first: int, detail: str) -> VerifyResult:
        return VerifyResult(False, n, first, detail, s.gaps)

    if s.first_bad:
        return bad(s.first_bad, f"record {s.first_bad} was changed, removed, moved or is no record")
    if torn:
        return bad(n + 1, f"the last line is incomplete ({torn} bytes; the next start cuts it)")
    for named, who in ((kept, "the state store counted"), (heads[1], "this node wrote")):
        if named is None:
            continue
        if named[0] > s.seq:
            return bad(n + 1, f"{named[0] - s.seq} record(s) {who} are missing at the end")
        if not s.covers(*named):
            return bad(s.upto(named[0]), f"the log does not hold the records {who}")
    if not head.present:
        return VerifyResult(True, 0, 0) if not lines else bad(n + 1, "the signed head is missing")
    if not head.genuine:
        return bad(n + 1, "the signed head does not verify")
    if head.count > s.seq:
        return bad(n + 1, f"{head.count - s.seq} record(s) missing at the end")
    if head.count < s.seq:
        return bad(s.upto(head.count) + 1, "records after the signed head")
    if not s.covers(head.count, head.mac):
        return bad(n, "the log is not the one its signed head names")
    return VerifyResult(True, n, 0, "", s.gaps)
