"""Verification of audit chains (`kmsnode audit verify`, AdminService.VerifyAudit).

Rules:
- `check` names the first record (1-based position in the chain: the line of a file, the row in
  seq order) that was changed, removed, reordered or is missing; `first_bad == 0` when the
  chain is intact. It never raises for what the medium holds, only for what the MAC raises (an
  HSM outage is not tampering).
- An AUDIT_GAP record whose MAC and chain verify and whose seq jump is the range it names is an
  acknowledged gap: it is listed in `gaps` and does not make the chain not intact. Before the
  operator accepted it, the same cut chain is not intact.
- With the state store's head (`Stored.kept`), the chain must still hold the record it names
  (or name it inside an acknowledged gap): a tail cut shows even when an older, genuine signed
  head was put back.
- A live chain is verified with what its writer knows it made durable (`written`: seq and MAC
  of its last record, taken between two commits, before the medium is read): a tail cut while
  the node runs is found even if an older head was put back. For a file, `AuditLog.snapshot()`
  also gives the file's size and signed head then (a commit writes records, fsyncs, prepares
  the head, counts it in the store and replaces the head, all under the commit lock), so
  verification never sees a half-written batch or a head newer than the records it read. Rows
  in PostgreSQL are committed a batch at a time and read in one snapshot, which needs no more.
- Every chain of a cluster (`verify_chains`): each is checked on its own; the report is intact
  only when every chain is, and names the first chain (in id order) that is not and its first
  bad record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from firmware.audit.chain import Gap, Mac, parse_head, scan, split
from firmware.audit.files import head_path, read_optional
from firmware.audit.medium import Stored


@dataclass(frozen=True)
class VerifyResult:
    intact: bool
    records: int  # records in the chain (lines of a file, rows)
    first_bad: int  # 0 when intact
    detail: str = ""
    gaps: tuple[Gap, ...] = ()  # acknowledged gaps (AUDIT_GAP records that verify)


@dataclass(frozen=True)
class Snapshot:
    """A consistent view of a live log file (see the module rules)."""

    size: int  # bytes of the log file after the last commit
    head: bytes = field(repr=False)  # the signed head file's content then (b"" if absent)
    seq: int  # seq of the last record the writer made durable (0: none)
    last: bytes = field(repr=False)  # its MAC (GENESIS when none)


def check(stored: Stored, mac: Mac, written: tuple[int, bytes] | None = None) -> VerifyResult:
    """Check every record's chain, MAC and seq, and the signed head (module rules). `written`:
    the live writer's last durable record."""
    lines, torn, kept = stored.lines, stored.torn, stored.kept
    head = parse_head(stored.head, mac)
    want = {h[0] for h in (kept, written) if h is not None}
    if head.genuine:
        want.add(head.count)
    s = scan(lines, mac, want, stored.keys)
    n = s.lines

    def bad(first: int, detail: str) -> VerifyResult:
        return VerifyResult(False, n, first, detail, s.gaps)

    if s.first_bad:
        return bad(s.first_bad, f"record {s.first_bad} was changed, removed, moved or is no record")
    if torn:
        return bad(n + 1, f"the last line is incomplete ({torn} bytes; the next start cuts it)")
    for named, who in ((kept, "the state store counted"), (written, "this node wrote")):
        if named is None:
            continue
        if named[0] > s.seq:
            return bad(n + 1, f"{named[0] - s.seq} record(s) {who} are missing at the end")
        if not s.covers(*named):
            return bad(s.upto(named[0]), f"the chain does not hold the records {who}")
    if not head.present:
        return VerifyResult(True, 0, 0) if not lines else bad(n + 1, "the signed head is missing")
    if not head.genuine:
        return bad(n + 1, "the signed head does not verify")
    if head.count > s.seq:
        return bad(n + 1, f"{head.count - s.seq} record(s) missing at the end")
    if head.count < s.seq:
        return bad(s.upto(head.count) + 1, "records after the signed head")
    if not s.covers(head.count, head.mac):
        return bad(n, "the chain is not the one its signed head names")
    return VerifyResult(True, n, 0, "", s.gaps)


def verify(
    path: Path,
    mac: Mac,
    snapshot: Snapshot | None = None,
    kept: tuple[int, bytes] | None = None,
) -> VerifyResult:
    """Check the log file at `path` (module rules).

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
    stored = Stored(lines, None, torn, True, head_data, kept)
    return check(stored, mac, (snapshot.seq, snapshot.last) if snapshot is not None else None)


# --- every chain of a cluster -----------------------------------------------------------------


@dataclass(frozen=True)
class ChainResult:
    """One chain's verification: its id ("" for the embedded file log) and VerifyResult's."""

    chain: str
    intact: bool
    records: int
    first_bad: int
    detail: str
    gaps: tuple[Gap, ...]

    @classmethod
    def of(cls, chain: str, r: VerifyResult) -> ChainResult:
        return cls(chain, r.intact, r.records, r.first_bad, r.detail, r.gaps)


@dataclass(frozen=True)
class AuditReport:
    """Every chain's result, in chain id order, and the contract's summary over them
    (VerifyAuditResponse): intact when every chain is; records of all chains; the first bad
    record of the first chain that is not intact (its position in that chain, named by
    `bad_chain` and `detail`)."""

    chains: tuple[ChainResult, ...]

    @property
    def intact(self) -> bool:
        return all(c.intact for c in self.chains)

    @property
    def records(self) -> int:
        return sum(c.records for c in self.chains)

    @property
    def first_bad_chain(self) -> ChainResult | None:
        return next((c for c in self.chains if not c.intact), None)

    @property
    def bad_chain(self) -> str | None:
        bad = self.first_bad_chain
        return bad.chain if bad is not None else None

    @property
    def first_bad(self) -> int:
        bad = self.first_bad_chain
        return bad.first_bad if bad is not None else 0

    @property
    def detail(self) -> str:
        """One line for an operator: which chains are not intact, the first one's first bad
        record and why ("" when intact). Never record content."""
        bad = [c for c in self.chains if not c.intact]
        if not bad:
            return ""
        first = bad[0]
        where = f"audit chain {first.chain}" if first.chain else "the audit log"
        more = f" ({len(bad) - 1} more chain(s) not intact)" if len(bad) > 1 else ""
        return (
            f"{where}: first bad record {first.first_bad} of {first.records} ({first.detail}){more}"
        )


def verify_chains(
    ids: Iterable[str],
    read: Callable[[str], Stored],
    mac: Mac,
    written: Mapping[str, tuple[int, bytes]] | None = None,
) -> AuditReport:
    """Check every chain of `ids` as `read(id)` gives it, one after the other (module rules).
    `written`: the live writers' last records by chain; a chain a live writer wrote that the
    medium no longer lists at all is checked too (and found not intact)."""
    written = written or {}
    return AuditReport(
        tuple(
            ChainResult.of(chain, check(read(chain), mac, written.get(chain)))
            for chain in sorted(set(ids) | set(written))
        )
    )
