"""The PostgreSQL medium of the audit log: one hash chain per node (chain id = node id) in the
database the cluster shares, and the reader that verifies every chain in it.

Tables (firmware/store/postgres.py, migration 3): audit_records (chain, seq, record): each
record's canonical line (chain.py) without its newline, under its own seq; audit_signed_heads
(chain, head): the chain's signed head; audit_heads (chain, count, mac): the state store's head
of the chain (the row PostgresStore's HeadStore methods read for their `audit_chain`);
audit_rejected: what `accept-gap` set aside, kept as evidence.

Rules:
- A commit is one statement (data-modifying CTEs: one round trip, one transaction): the batch's
  rows, the signed head naming its last record and the state store's head, which only moves up
  (checked in the statement: when it would not, nothing is written and the commit raises
  AuditHeadRegression). It is committed (synchronous_commit is raised to `on` on the writer's
  session when the server has it `off`) before `commit` returns, so before any append of the
  batch is answered. Group commit: every record that waited while one batch committed goes into
  the next statement.
- The writer lock is a session advisory lock on a 64-bit key derived from the chain id, taken
  with pg_try_advisory_lock on the writer's own connection and held while it lives: a second
  writer of the chain (a node given the same id, `accept-gap` while the node runs) is refused at
  once. The server drops the lock with the session (the process died, the connection broke).
- A connection that broke during a commit leaves its outcome unknown. The medium reconnects,
  takes the lock again (refused while another session holds it) and reads the chain's last row:
  when it is the batch's last record the batch is committed (and answered so); when it is the
  last record known before, the batch is not, and is sent once more on the new connection (so a
  server that restarted while the writer was idle costs no refusal); anything else means the
  chain moved on without this writer, and every later commit is refused (fail closed: the
  node's next start checks the chain).
- PostgreSQL unreachable: the commit raises StoreUnavailable (error class and SQLSTATE, never
  server text, which can name hosts and values); the log refuses the batch; every later commit
  first tries to reconnect, so the log serves again without a new object once the server is
  back.
- Reads (start, accept-gap, verify) are one REPEATABLE READ, READ ONLY transaction per chain:
  its rows and both heads of one moment, never half a batch.
- A row must hold the record of its own seq (scan's keys): a record moved to another key does
  not verify.
- Verify lists every chain that has rows or either head, so a chain whose heads were deleted
  is still checked, and a chain whose rows were deleted under its heads is named.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from firmware.audit.chain import GENESIS, Mac
from firmware.audit.medium import Batch, Stored
from firmware.audit.verify import AuditReport, verify_chains
from firmware.core.errors import (
    AuditHeadRegression,
    AuditUnavailable,
    ConfigError,
    StoreUnavailable,
)

__all__ = ["PostgresMedium", "chain_ids", "read_chain", "verify_database"]

log = logging.getLogger("kmsnode.audit")

Conn = psycopg.Connection[tuple[Any, ...]]
Connect = Callable[[], Conn]
Opener = Callable[[], AbstractContextManager[Conn]]

CHAIN_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

_COMMIT = """
WITH kept AS (
    INSERT INTO audit_heads AS h (chain, count, mac) VALUES (%(chain)s, %(last)s, %(mac)s)
    ON CONFLICT (chain) DO UPDATE SET count = EXCLUDED.count, mac = EXCLUDED.mac
    WHERE h.count < EXCLUDED.count
    RETURNING 1
), added AS (
    INSERT INTO audit_records (chain, seq, record)
    SELECT %(chain)s, t.seq, t.record
    FROM unnest(%(seqs)s::bigint[], %(records)s::bytea[]) AS t(seq, record)
    WHERE EXISTS (SELECT FROM kept)
    RETURNING 1
), signed AS (
    INSERT INTO audit_signed_heads (chain, head)
    SELECT %(chain)s, %(head)s WHERE EXISTS (SELECT FROM kept)
    ON CONFLICT (chain) DO UPDATE SET head = EXCLUDED.head
    RETURNING 1
)
SELECT (SELECT count(*) FROM kept), (SELECT count(*) FROM added), (SELECT count(*) FROM signed)
"""

# accept-gap: the rows after the last one kept (all when none is), then the signed head, set
# aside as evidence before the rows go
_REJECT_ROWS = """
INSERT INTO audit_rejected (chain, gap, seq, content)
SELECT chain, %(gap)s, seq, record FROM audit_records
WHERE chain = %(chain)s AND (%(kept)s::bigint IS NULL OR seq > %(kept)s)
"""
_DELETE_ROWS = """
DELETE FROM audit_records WHERE chain = %(chain)s AND (%(kept)s::bigint IS NULL OR seq > %(kept)s)
"""
_REJECT_HEAD = """
INSERT INTO audit_rejected (chain, gap, seq, content)
SELECT chain, %(gap)s, NULL, head FROM audit_signed_heads WHERE chain = %(chain)s
"""


def lock_key(chain: str) -> int:
    """The advisory lock key of a chain (64 bits: two chain ids never share one in practice)."""
    digest = hashlib.sha256(b"kmsnode-audit-chain\x00" + chain.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _unavailable(exc: psycopg.Error) -> StoreUnavailable:
    """The error for a driver error: its class and SQLSTATE; the server text only to the log."""
    log.warning("audit chain database error: %s: %s", type(exc).__name__, str(exc)[:200])
    state = f", SQLSTATE {exc.sqlstate}" if exc.sqlstate else ""
    return StoreUnavailable(f"PostgreSQL unavailable ({type(exc).__name__}{state})")


def _record_mac(record: bytes) -> bytes:
    try:
        return bytes.fromhex(json.loads(record)["mac"])
    except (ValueError, TypeError, KeyError, RecursionError):
        return b""  # not a record: matches no MAC


def read_chain(conn: Conn, chain: str) -> Stored:
    """The chain's rows and both heads, of one moment. Raises psycopg.Error."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        rows = conn.execute(
            "SELECT seq, record FROM audit_records WHERE chain = %s ORDER BY seq", (chain,)
        ).fetchall()
        head = conn.execute(
            "SELECT head FROM audit_signed_heads WHERE chain = %s", (chain,)
        ).fetchone()
        kept = conn.execute(
            "SELECT count, mac FROM audit_heads WHERE chain = %s", (chain,)
        ).fetchone()
    return Stored(
        [bytes(r[1]) for r in rows],
        [int(r[0]) for r in rows],
        0,
        bool(rows),
        bytes(head[0]) if head is not None else None,
        (int(kept[0]), bytes(kept[1])) if kept is not None else None,
    )


def chain_ids(conn: Conn) -> list[str]:
    """Every chain that has rows or a head. Raises psycopg.Error."""
    rows = conn.execute(
        "SELECT chain FROM audit_records UNION SELECT chain FROM audit_signed_heads"
        " UNION SELECT chain FROM audit_heads"
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


def verify_database(
    opener: Opener, mac: Mac, written: Mapping[str, tuple[int, bytes]] | None = None
) -> AuditReport:
    """Verify every chain in the database (verify.py's rules, each chain read in one snapshot).

    `opener`: a connection as a context manager (PostgresStore.connection for a pooled one, or
    a function returning a new psycopg connection, which is closed after). `written`: the live
    writers' last records by chain (AuditLog.verify_all gives its own). Raises StoreUnavailable
    when the database cannot be read; HsmUnavailable from `mac`."""
    try:
        with opener() as conn:
            ids = chain_ids(conn)
            # one chain at a time: only one chain's records are in memory at once
            return verify_chains(ids, lambda chain: read_chain(conn, chain), mac, written)
    except psycopg.Error as exc:
        raise _unavailable(exc) from None


class PostgresMedium:
    """The chain `chain` (this node's id) on connections from `connect` (PostgresStore.dedicated,
    or any function returning a new psycopg connection; the medium closes them)."""

    def __init__(self, connect: Connect, chain: str) -> None:
        if not CHAIN_ID.fullmatch(chain):
            raise ConfigError("an audit chain id is 1 to 64 letters, digits, '-', '_' or '.'")
        self.chain = chain
        self.where = f"the audit chain {chain}"
        self.head_where = f"the signed head of the audit chain {chain}"
        self.hint = (
            f"run `kmsnode audit accept-gap --config FILE --chain {chain}` after investigating"
        )
        self._connect = connect
        self._key = lock_key(chain)
        self._conn: Conn | None = None  # holds the writer lock while it lives
        self._tail: tuple[int, bytes] = (0, GENESIS)  # seq and MAC of the last committed record
        self._unconfirmed: Batch | None = None  # sent when its connection broke
        self._moved = False  # the chain moved on without this writer
        self._keys: Sequence[int] = ()  # the row keys of the last read

    # --- the connection and its lock ----------------------------------------------------------

    def _open(self) -> Conn:
        """A new connection holding the chain's writer lock, committing synchronously."""
        try:
            conn = self._connect()
        except psycopg.Error as exc:
            raise _unavailable(exc) from None
        try:
            conn.autocommit = True
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
            if not row or not row[0]:
                raise AuditUnavailable(
                    f"{self.where} is in use by another process (a running node?)"
                )
            setting = conn.execute("SELECT current_setting('synchronous_commit')").fetchone()
            if setting is None or setting[0] == "off":
                # an acknowledged record must survive a server crash
                conn.execute("SET synchronous_commit = on")
        except BaseException as exc:
            conn.close()
            if isinstance(exc, psycopg.Error):
                raise _unavailable(exc) from None
            raise
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _live(self) -> Conn:
        if self._conn is None:
            raise AuditUnavailable(f"{self.where} is not connected")
        return self._conn

    def lock(self) -> None:
        self._conn = self._open()

    def close(self) -> None:
        self._drop()  # ending the session releases the lock

    # --- reading ------------------------------------------------------------------------------

    def read(self) -> Stored:
        conn = self._live()
        try:
            stored = read_chain(conn, self.chain)
        except psycopg.Error as exc:
            raise _unavailable(exc) from None
        self._keys = stored.keys or ()
        return stored

    def begin(self, stored: Stored, seq: int, mac: bytes) -> None:
        self._tail = (seq, mac)

    def _last_row(self, conn: Conn) -> tuple[int, bytes]:
        row = conn.execute(
            "SELECT seq, record FROM audit_records WHERE chain = %s ORDER BY seq DESC LIMIT 1",
            (self.chain,),
        ).fetchone()
        return (0, GENESIS) if row is None else (int(row[0]), _record_mac(bytes(row[1])))

    # --- writing ------------------------------------------------------------------------------

    def _params(self, batch: Batch) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "last": batch.last,
            "mac": batch.mac,
            "seqs": list(range(batch.first, batch.last + 1)),
            "records": [line.removesuffix(b"\n") for line in batch.lines],
            "head": batch.head,
        }

    def _regression(self, batch: Batch) -> AuditHeadRegression:
        return AuditHeadRegression(
            f"the state store's head of {self.where} already counts record {batch.last} or more"
        )

    def _send(self, batch: Batch) -> None:
        """One commit statement. When the connection broke, the outcome is unknown: the
        connection is dropped and `_unconfirmed` names the batch."""
        conn = self._live()
        self._unconfirmed = batch
        try:
            row = conn.execute(_COMMIT, self._params(batch)).fetchone()
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                self._drop()
            else:
                self._unconfirmed = None  # the statement failed whole: nothing committed
            raise _unavailable(exc) from None
        self._unconfirmed = None
        if row is None or row[0] != 1:
            raise self._regression(batch)
        self._tail = (batch.last, batch.mac)

    def commit(self, batch: Batch) -> None:
        try:
            self._send(batch)
        except StoreUnavailable:
            if self._conn is not None:
                raise  # the connection is fine: the batch is not committed
            if self.restore() is batch:
                return  # committed before the connection broke
            self._send(batch)  # not committed: once more, on the new connection

    def restore(self) -> Batch | None:
        if self._moved:
            raise AuditUnavailable(
                f"{self.where} moved on without this writer (restart the node: its start"
                " checks the chain)"
            )
        if self._conn is not None:
            return None
        conn = self._open()
        self._conn = conn
        try:
            tail = self._last_row(conn)
        except psycopg.Error as exc:
            self._drop()
            raise _unavailable(exc) from None
        batch, self._unconfirmed = self._unconfirmed, None
        if tail == self._tail:
            return None
        if batch is not None and tail == (batch.last, batch.mac):
            self._tail = tail
            return batch
        self._moved = True
        return self.restore()  # raises

    def rewrite(self, keep: int, gap: Batch, head_rejected: bool) -> None:
        conn = self._live()
        params = {
            **self._params(gap),
            "gap": gap.first,
            "kept": self._keys[keep - 1] if keep else None,
        }
        try:
            with conn.transaction():
                conn.execute(_REJECT_ROWS, params)
                conn.execute(_DELETE_ROWS, params)
                if head_rejected:
                    conn.execute(_REJECT_HEAD, params)
                row = conn.execute(_COMMIT, params).fetchone()
                if row is None or row[0] != 1:
                    raise self._regression(gap)  # rolls the whole rewrite back
        except psycopg.Error as exc:
            raise _unavailable(exc) from None

    def verifier(self, seq: int, mac: bytes) -> Callable[[Mac], AuditReport]:
        written = {self.chain: (seq, mac)}
        return lambda key: verify_database(self._connect, key, written)
