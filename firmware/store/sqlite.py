"""SQLite implementation of the core's Store port (the embedded default).

Rules:
- WAL journal, synchronous=FULL: a write that returned is on disk. The one exception is an
  audit head written with `durable=False` (HeadStore): committed with synchronous=NORMAL (no
  fsync; in WAL mode the next full commit makes it durable with everything before it).
- Every write is one transaction (`with self._tx()`): on any error nothing of it remains.
- Writes go through one connection guarded by one lock; reads use one read-only connection per
  thread, so that (with WAL) a lookup never waits behind a commit's fsync.
- Resolutions are written by group commit: concurrent `add_resolution` calls are committed in one
  transaction (one fsync) by a writer thread, and each call returns only once its row is durable.
  An fsync costs milliseconds on these disks; one per resolve would cap the node's rate.
- The schema is versioned with PRAGMA user_version; MIGRATIONS[i] moves version i to i + 1 (SQL
  text, or a function for a data conversion SQL cannot express) and is applied in the same
  transaction as the version bump. A database newer than this code is refused
  (SchemaNewerThanCode).
- The database and its -wal/-shm files are mode 0600 whatever the umask or the folder: the file
  is created (or brought back to) 0600 before SQLite opens it, and SQLite gives its -wal and -shm
  files the main file's mode.
- A warrant's DF2 identities are one JSON array (any character, a newline included, stays inside
  its identity); values come back exactly as stored (firmware.store.common has the shared rules:
  text the PostgreSQL store could not hold is refused, COUNTER offset, audit head only forward).
- sqlite3.OperationalError (locked past the timeout, I/O error, disk full, read-only) surfaces as
  StoreUnavailable, a uniqueness violation as StoreConflict: never a raw sqlite3 error.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from firmware.core.errors import SchemaNewerThanCode, StoreUnavailable
from firmware.core.ports import (
    Destination,
    KeyName,
    KeyRecord,
    Resolution,
    StoreConflict,
    User,
    Warrant,
    WrappedKey,
)
from firmware.store.common import (
    audit_head_allowed,
    audit_head_regression,
    check_destination,
    check_user,
    check_warrant,
    counter_key,
)


def _df2_to_json(db: sqlite3.Connection) -> None:
    """5: DF2 identities were joined with "\n"; store them as a JSON array (the rows written
    before can only be split on "\n", as the old code read them)."""
    rows = db.execute("SELECT liid, df2_identities FROM warrants").fetchall()
    for liid, joined in rows:
        df2 = joined.split("\n") if joined else []
        db.execute("UPDATE warrants SET df2_identities = ? WHERE liid = ?", (json.dumps(df2), liid))


MIGRATIONS: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        identity TEXT NOT NULL UNIQUE,
        psk_id BLOB NOT NULL UNIQUE,
        kek_version INTEGER NOT NULL,
        wrapped_psk BLOB NOT NULL
    );
    CREATE TABLE identities (
        identity TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        is_alias INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX identities_user ON identities(user_id);
    CREATE TABLE resolutions (
        ticket_id BLOB NOT NULL,
        responder TEXT NOT NULL,
        randr_kms BLOB NOT NULL,
        resolved_at REAL NOT NULL
    );
    CREATE INDEX resolutions_ticket ON resolutions(ticket_id);
    CREATE TABLE warrants (
        liid TEXT PRIMARY KEY,
        target TEXT NOT NULL,
        valid_from REAL NOT NULL,
        valid_until REAL NOT NULL,
        df2_identities TEXT NOT NULL
    );
    CREATE INDEX warrants_target ON warrants(target);
    CREATE TABLE key_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        created REAL NOT NULL,
        retired REAL,
        destroyed REAL,
        PRIMARY KEY (name, version)
    );
    """,
    # 2: last COUNTER timestamp per user (RFC 3830 5.4: a counter must strictly increase)
    """
    CREATE TABLE counters (
        identity TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 3: the responder's ID Data as sent (key forking derives TGK' from these exact bytes)
    """
    ALTER TABLE resolutions ADD COLUMN id_data BLOB NOT NULL DEFAULT x'';
    """,
    # 4: the audit chain head, so a cut audit log shows even with an old head file put back
    """
    CREATE TABLE audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        count INTEGER NOT NULL,
        mac BLOB NOT NULL
    );
    """,
    _df2_to_json,
    # 6: COUNTER timestamps are unsigned 64-bit; store value - 2**63 (common.counter_key). Rows
    # written before are below 2**63 (larger ones could not be stored).
    """
    UPDATE counters SET value = value + (-9223372036854775807 - 1);
    """,
    # 7: when a key version was activated (a cluster rotation stages a version first, until
    # every node's HSM holds it); versions recorded before were active from their creation
    """
    ALTER TABLE key_versions ADD COLUMN activated REAL;
    UPDATE key_versions SET activated = created;
    """,
    # 8: ETSI X1 tasks are warrants with an XID (unique when set), the DIDs their DF2
    # identities came from and their DeliveryType; X1 destinations
    """
    ALTER TABLE warrants ADD COLUMN xid TEXT NOT NULL DEFAULT '';
    ALTER TABLE warrants ADD COLUMN dids TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE warrants ADD COLUMN delivery_type TEXT NOT NULL DEFAULT '';
    CREATE UNIQUE INDEX warrants_xid ON warrants(xid) WHERE xid <> '';
    CREATE TABLE x1_destinations (
        did TEXT PRIMARY KEY,
        friendly_name TEXT NOT NULL,
        delivery_type TEXT NOT NULL,
        address TEXT NOT NULL
    );
    """,
)


class SqliteStore:
    """Store port on one SQLite file."""

    def __init__(self, path: Path | str, timeout: float = 30.0) -> None:
        """`timeout`: how long a write waits for another process's lock (then
        StoreUnavailable)."""
        _private_file(Path(path))
        self._path = str(path)
        self._readers = threading.local()
        self._all_readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=timeout
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._pending: list[tuple[Resolution, threading.Event, list[BaseException]]] = []
        self._pending_cv = threading.Condition()
        self._closing = False
        self._writer = threading.Thread(target=self._write_resolutions, daemon=True,
                                        name="store-group-commit")  # fmt: skip
        self._writer.start()

    # --- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock, _mapped_errors():
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._readers, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA query_only=ON")
            self._readers.db = db
            with self._lock:
                self._all_readers.append(db)
        return db

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with _mapped_errors():
            return self._reader().execute(sql, args).fetchall()

    def _migrate(self) -> None:
        with self._tx() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > len(MIGRATIONS):
                raise SchemaNewerThanCode(
                    f"state database schema {version} is newer than this node ({len(MIGRATIONS)})"
                )
            for target in range(version, len(MIGRATIONS)):
                step = MIGRATIONS[target]
                if callable(step):
                    step(db)
                else:
                    for statement in step.split(";"):
                        if statement.strip():
                            db.execute(statement)
                db.execute(f"PRAGMA user_version={target + 1}")

    @property
    def schema_version(self) -> int:
        return int(self._query("PRAGMA user_version")[0][0])

    def close(self) -> None:
        with self._pending_cv:
            self._closing = True
            self._pending_cv.notify()
        self._writer.join()
        with self._lock:
            for reader in self._all_readers:
                reader.close()
            self._db.close()

    # --- users ------------------------------------------------------------------------------

    def put_user(self, user: User) -> None:
        check_user(user)
        with self._tx() as db:
            for identity in user.identities:
                row = db.execute(
                    "SELECT u.identity FROM identities i JOIN users u ON u.id = i.user_id"
                    " WHERE i.identity = ?",
                    (identity,),
                ).fetchone()
                if row and row[0] != user.identity:
                    raise StoreConflict(f"identity {identity} belongs to another user")
            row = db.execute(
                "SELECT identity FROM users WHERE psk_id = ?", (user.psk_id,)
            ).fetchone()
            if row and row[0] != user.identity:
                raise StoreConflict("the PSK id belongs to another user")
            db.execute("DELETE FROM users WHERE identity = ?", (user.identity,))
            cursor = db.execute(
                "INSERT INTO users (identity, psk_id, kek_version, wrapped_psk) VALUES (?,?,?,?)",
                (user.identity, user.psk_id, user.wrapped_psk.kek_version, user.wrapped_psk.blob),
            )
            user_id = cursor.lastrowid
            db.executemany(
                "INSERT INTO identities (identity, user_id, is_alias) VALUES (?,?,?)",
                [(user.identity, user_id, 0)] + [(a, user_id, 1) for a in user.aliases],
            )

    def delete_user(self, identity: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM users WHERE identity = ?", (identity,)).rowcount > 0

    # One statement per load, so one consistent snapshot of the user and its aliases without a
    # BEGIN/COMMIT around two queries: a row per alias, or one row with a NULL alias.
    _USER_BY = {
        "psk_id": "SELECT u.identity, u.psk_id, u.kek_version, u.wrapped_psk, a.identity"
        " FROM users u LEFT JOIN identities a ON a.user_id = u.id AND a.is_alias = 1"
        " WHERE u.psk_id = ? ORDER BY a.identity",
        "identity": "SELECT u.identity, u.psk_id, u.kek_version, u.wrapped_psk, a.identity"
        " FROM users u LEFT JOIN identities a ON a.user_id = u.id AND a.is_alias = 1"
        " WHERE u.id = (SELECT user_id FROM identities WHERE identity = ?) ORDER BY a.identity",
    }

    def _load_user(self, by: str, arg: object) -> User | None:
        with _mapped_errors():
            rows = self._reader().execute(self._USER_BY[by], (arg,)).fetchall()
        if not rows:
            return None
        first = rows[0]
        return User(
            identity=first[0],
            aliases=tuple(r[4] for r in rows if r[4] is not None),
            psk_id=bytes(first[1]),
            wrapped_psk=WrappedKey(kek_version=first[2], blob=bytes(first[3])),
        )

    def user_by_psk_id(self, psk_id: bytes) -> User | None:
        return self._load_user("psk_id", psk_id)

    def user_by_identity(self, identity: str) -> User | None:
        return self._load_user("identity", identity)

    def list_users(self) -> list[User]:
        names = self._query("SELECT identity FROM users ORDER BY identity")
        users = [self.user_by_identity(str(n[0])) for n in names]
        return [u for u in users if u is not None]

    def count_users(self) -> int:
        return int(self._query("SELECT count(*) FROM users")[0][0])

    def advance_counter(self, identity: str, value: int) -> bool:
        stored = counter_key(value)
        with self._tx() as db:
            # One compare-and-set statement, as in the PostgreSQL store.
            row = db.execute(
                "INSERT INTO counters (identity, value) VALUES (?, ?)"
                " ON CONFLICT (identity) DO UPDATE SET value = excluded.value"
                " WHERE counters.value < excluded.value RETURNING 1",
                (identity, stored),
            ).fetchone()
            return row is not None

    # --- resolutions ------------------------------------------------------------------------

    def add_resolution(self, resolution: Resolution) -> None:
        done, failure = threading.Event(), list[BaseException]()
        with self._pending_cv:
            if self._closing:
                raise StoreUnavailable("state store is closed")
            self._pending.append((resolution, done, failure))
            self._pending_cv.notify()
        done.wait()
        if failure:
            raise failure[0]

    def _write_resolutions(self) -> None:
        while True:
            with self._pending_cv:
                while not self._pending and not self._closing:
                    self._pending_cv.wait()
                batch, self._pending = self._pending, []
                if not batch:
                    return
            try:
                with self._tx() as db:
                    db.executemany(
                        "INSERT INTO resolutions (ticket_id, responder, randr_kms, resolved_at,"
                        " id_data) VALUES (?,?,?,?,?)",
                        [
                            (r.ticket_id, r.responder, r.randr_kms, r.resolved_at, r.id_data)
                            for r, _, _ in batch
                        ],
                    )
            except BaseException as exc:  # every waiter learns its row was not written
                for _, _, failure in batch:
                    failure.append(exc)
            for _, done, _ in batch:
                done.set()

    def resolutions(self, ticket_id: bytes) -> list[Resolution]:
        rows = self._query(
            "SELECT responder, randr_kms, resolved_at, id_data FROM resolutions"
            " WHERE ticket_id = ? ORDER BY resolved_at, rowid",
            (ticket_id,),
        )
        return [
            Resolution(ticket_id, str(r[0]), bytes(r[1]), float(r[2]), bytes(r[3])) for r in rows
        ]

    # --- warrants ---------------------------------------------------------------------------

    def put_warrant(self, warrant: Warrant) -> None:
        check_warrant(warrant)
        w = warrant
        with self._tx() as db:
            # an upsert on the LIID, not INSERT OR REPLACE: that would silently delete another
            # warrant holding the same XID instead of refusing the write
            db.execute(
                "INSERT INTO warrants (liid, target, valid_from, valid_until, df2_identities,"
                " xid, dids, delivery_type) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (liid) DO UPDATE"
                " SET target = excluded.target, valid_from = excluded.valid_from,"
                " valid_until = excluded.valid_until, df2_identities = excluded.df2_identities,"
                " xid = excluded.xid, dids = excluded.dids, delivery_type = excluded.delivery_type",
                (
                    w.liid,
                    w.target,
                    w.valid_from,
                    w.valid_until,
                    json.dumps(list(w.df2_identities)),
                    w.xid,
                    json.dumps(list(w.dids)),
                    w.delivery_type,
                ),
            )

    def delete_warrant(self, liid: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM warrants WHERE liid = ?", (liid,)).rowcount > 0

    _WARRANT = (
        "SELECT liid, target, valid_from, valid_until, df2_identities, xid, dids, delivery_type"
        " FROM warrants"
    )

    @staticmethod
    def _warrant(row: tuple[Any, ...]) -> Warrant:
        return Warrant(
            liid=row[0],
            target=row[1],
            valid_from=float(row[2]),
            valid_until=float(row[3]),
            df2_identities=tuple(json.loads(row[4])),
            xid=row[5],
            dids=tuple(json.loads(row[6])),
            delivery_type=row[7],
        )

    def list_warrants(self) -> list[Warrant]:
        return [self._warrant(r) for r in self._query(self._WARRANT + " ORDER BY liid")]

    def warrants_for(self, target: str) -> list[Warrant]:
        rows = self._query(self._WARRANT + " WHERE target = ? ORDER BY liid", (target,))
        return [self._warrant(r) for r in rows]

    # --- X1 destinations --------------------------------------------------------------------

    def put_destination(self, destination: Destination) -> None:
        check_destination(destination)
        d = destination
        with self._tx() as db:
            db.execute(
                "INSERT INTO x1_destinations (did, friendly_name, delivery_type, address)"
                " VALUES (?,?,?,?) ON CONFLICT (did) DO UPDATE SET"
                " friendly_name = excluded.friendly_name, delivery_type = excluded.delivery_type,"
                " address = excluded.address",
                (d.did, d.friendly_name, d.delivery_type, d.address),
            )

    def delete_destination(self, did: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM x1_destinations WHERE did = ?", (did,)).rowcount > 0

    def list_destinations(self) -> list[Destination]:
        rows = self._query(
            "SELECT did, friendly_name, delivery_type, address FROM x1_destinations ORDER BY did"
        )
        return [Destination(*(str(v) for v in r)) for r in rows]

    # --- audit chain head -------------------------------------------------------------------

    def audit_head(self) -> tuple[int, bytes] | None:
        rows = self._query("SELECT count, mac FROM audit_head WHERE id = 1")
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    def set_audit_head(self, count: int, mac: bytes, durable: bool = True) -> None:
        with self._tx(durable) as db:
            row = db.execute("SELECT count, mac FROM audit_head WHERE id = 1").fetchone()
            kept = (int(row[0]), bytes(row[1])) if row else None
            if not audit_head_allowed(kept, count, mac):
                assert kept is not None
                raise audit_head_regression(kept, count, mac)
            db.execute("INSERT OR REPLACE INTO audit_head VALUES (1, ?, ?)", (count, mac))

    # --- key versions -----------------------------------------------------------------------

    def record_key(self, record: KeyRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO key_versions"
                " (name, version, created, retired, destroyed, activated) VALUES (?,?,?,?,?,?)",
                (
                    record.name.value,
                    record.version,
                    record.created,
                    record.retired,
                    record.destroyed,
                    record.activated,
                ),
            )

    def key_records(self, name: KeyName) -> list[KeyRecord]:
        rows = self._query(
            "SELECT version, created, retired, destroyed, activated FROM key_versions"
            " WHERE name = ? ORDER BY version",
            (name.value,),
        )
        return [KeyRecord(name, int(r[0]), float(r[1]), r[2], r[3], r[4]) for r in rows]


@contextmanager
def _mapped_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.IntegrityError:
        raise StoreConflict("the write would break a uniqueness rule") from None
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(f"state store unavailable (sqlite3: {exc})") from None


def _private_file(path: Path) -> None:
    """Create the database file 0600 (or bring an existing one back to 0600) before SQLite opens
    it: SQLite creates files 0644 & ~umask, and gives -wal and -shm the main file's mode."""
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if file == path else 0)
        try:
            fd = os.open(file, flags, 0o600)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot open the state database {file}: {exc.strerror}"
            ) from None
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
