"""Where an audit chain lives: the medium protocol between the chain logic and its storage.

The chain logic (records, MACs, signed heads, start rules, group commit, verification) is the
same whatever holds the records (log.py, recovery.py, verify.py); a medium only stores them: a
file beside its signed head file (files.py, the embedded default) or rows of a PostgreSQL
database shared by a cluster, one chain per node (pg.py).

Rules every medium keeps:
- `lock` takes the chain's exclusive writer lock, held until `close`: a second writer of the
  same chain (another process, `accept-gap` while a node runs) is refused with AuditUnavailable
  at once, never waits. The lock dies with its holder (a crashed node never blocks anyone).
- `read` returns one consistent view: the committed records in chain order, the signed head as
  stored and the state store's head of the chain. It never raises for what they hold, only when
  it cannot read at all (AuditUnavailable, StoreUnavailable).
- `commit(batch)` returns only once the batch's records, the signed head naming its last record
  and the state store's head are durable, all three or none: its point of no return is one
  place (the state store's head for a file, the transaction's COMMIT in PostgreSQL). When it
  raises, nothing of the batch counts, or the medium cannot tell (an answer lost with its
  connection): `restore`, called before every commit, tells then.
- `restore` brings the medium back to its last committed state after a failure and returns the
  failed batch when it turned out committed after all (the writer then adopts its seqs); it
  raises while it cannot (the failure goes on), and keeps raising when the chain moved on
  without this writer (fail closed).
- `rewrite` is `accept-gap`'s one change: keep the first records that verify, set the rest (and
  a signed head that does not verify) aside as evidence, append the signed AUDIT_GAP record and
  make it the head everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from firmware.audit.chain import Mac

if TYPE_CHECKING:
    from firmware.audit.verify import AuditReport


@dataclass(frozen=True)
class Stored:
    """One consistent view of a chain as a medium holds it."""

    lines: Sequence[bytes] = field(repr=False)  # complete records in order, without newlines
    keys: Sequence[int] | None  # the seq each record is stored under (rows); None: a file
    torn: int  # bytes of an incomplete last record (a file's torn line); 0 for rows
    exists: bool  # the log file exists / the chain has rows
    head: bytes | None = field(repr=False)  # the signed head as stored; None: absent
    kept: tuple[int, bytes] | None  # the state store's head of the chain


@dataclass(frozen=True)
class Batch:
    """Records to commit together: consecutive seqs from `first`, each line with its newline."""

    first: int
    lines: tuple[bytes, ...] = field(repr=False)
    mac: bytes = field(repr=False)  # MAC of the last record
    head: bytes = field(repr=False)  # the signed head naming the last record

    @property
    def last(self) -> int:
        return self.first + len(self.lines) - 1


class Medium(Protocol):
    chain: str  # the chain's id ("" for the embedded file log)
    where: str  # "the audit log PATH" / "the audit chain ID": the subject of messages
    head_where: str  # the signed head, named the same way
    hint: str  # how an operator goes on after a refused start

    def lock(self) -> None: ...

    def read(self) -> Stored: ...

    def begin(self, stored: Stored, seq: int, mac: bytes) -> None:
        """Start writing after `read` found no problem: `seq`/`mac` of the last record."""
        ...

    def restore(self) -> Batch | None: ...

    def commit(self, batch: Batch) -> None: ...

    def rewrite(self, keep: int, gap: Batch, head_rejected: bool) -> None: ...

    def verifier(self, seq: int, mac: bytes) -> Callable[[Mac], AuditReport]:
        """Called between two commits (`seq`/`mac`: the last committed record): what verifying
        the chain as of now needs, as a function run after the commit lock is released."""
        ...

    def close(self) -> None: ...
