"""PostgreSQL implementation of the core's Store port (state shared by every node of a cluster).

Rules:
- psycopg 3 over a psycopg_pool connection pool. Connections are in autocommit mode: a read or
  a one-statement write is one round trip and one transaction; a write of several statements
  runs in `conn.transaction()` (BEGIN ... COMMIT), so every write is wholly done or not at all.
- Isolation is READ COMMITTED. It is enough because every read is one statement (one snapshot:
  a user comes with its aliases through a sub-select), every compare-and-set is one statement
  (an upsert whose WHERE is evaluated on the latest committed row, under its row lock), and the
  multi-statement user writes are serialised cluster-wide by a transaction advisory lock (the
  unique constraints stay as a backstop: a violation is StoreConflict).
- COUNTER timestamps: `advance_counter` is one `INSERT ... ON CONFLICT DO UPDATE ... WHERE
  counters.value < EXCLUDED.value RETURNING`: two nodes can never both admit the same value.
- A resolution is committed (synchronous_commit as the server has it, `on` by default) before
  `add_resolution` returns, so Xk on any node sees it at once. Group commit is PostgreSQL's own:
  concurrent commits share one WAL flush.
- The audit head is one row per chain (`audit_chain`, the node id in a cluster); it only moves
  forward, checked in the same statement that writes it (AuditHeadRegression otherwise).
- The schema is versioned in table schema_version; MIGRATIONS[i] moves version i to i + 1 and is
  applied in one transaction with the version bump, under an advisory lock so that nodes starting
  together migrate once. A database newer than this code is refused (SchemaNewerThanCode).
- Text columns use the "C" collation: equality and order are by code point, as in SQLite and
  Python, whatever the database's locale. Values come back exactly as stored; DF2 identities are
  a text[] (no separator that a value could contain). firmware.store.common has the rules both
  stores share.
- The password is never part of the URL (a URL carrying one is refused with ConfigError): it is
  given separately (read_password: a file or a systemd credential) and passed to libpq as a
  connection parameter, never logged.
- Every driver failure surfaces as StoreUnavailable (connection refused, server gone, pool
  timeout, any other psycopg error), a uniqueness violation as StoreConflict: never a raw driver
  error. After a connection-level failure the idle connections are checked at once, so a server
  that comes back is used again without a new store object; reconnection attempts give up after
  `reconnect_timeout` and start again on the next request, so a long outage is not followed by a
  long back-off.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from firmware.core.errors import ConfigError, SchemaNewerThanCode, StoreUnavailable
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
    audit_head_regression,
    check_destination,
    check_user,
    check_warrant,
    counter_key,
)
from firmware.store.password import read_password

__all__ = ["MIGRATIONS", "PostgresStore", "read_password"]

log = logging.getLogger("kmsnode.store")

Conn = psycopg.Connection[tuple[Any, ...]]

# Advisory lock keys (pg_advisory_xact_lock): one for migrations, one for user writes.
_MIGRATION_LOCK = 0x6B6D_7301
_USERS_LOCK = 0x6B6D_7302

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        identity TEXT COLLATE "C" NOT NULL UNIQUE,
        psk_id BYTEA NOT NULL UNIQUE,
        kek_version INTEGER NOT NULL,
        wrapped_psk BYTEA NOT NULL
    );
    CREATE TABLE identities (
        identity TEXT COLLATE "C" PRIMARY KEY,
        user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        is_alias BOOLEAN NOT NULL
    );
    CREATE INDEX identities_user ON identities(user_id);
    CREATE TABLE resolutions (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        ticket_id BYTEA NOT NULL,
        responder TEXT COLLATE "C" NOT NULL,
        randr_kms BYTEA NOT NULL,
        resolved_at DOUBLE PRECISION NOT NULL,
        id_data BYTEA NOT NULL
    );
    CREATE INDEX resolutions_ticket ON resolutions(ticket_id);
    CREATE TABLE warrants (
        liid TEXT COLLATE "C" PRIMARY KEY,
        target TEXT COLLATE "C" NOT NULL,
        valid_from DOUBLE PRECISION NOT NULL,
        valid_until DOUBLE PRECISION NOT NULL,
        df2_identities TEXT[] COLLATE "C" NOT NULL
    );
    CREATE INDEX warrants_target ON warrants(target);
    CREATE TABLE key_versions (
        name TEXT COLLATE "C" NOT NULL,
        version INTEGER NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        retired DOUBLE PRECISION,
        destroyed DOUBLE PRECISION,
        PRIMARY KEY (name, version)
    );
    -- last COUNTER timestamp per user, stored as value - 2**63 (common.counter_key)
    CREATE TABLE counters (
        identity TEXT COLLATE "C" PRIMARY KEY,
        value BIGINT NOT NULL
    );
    -- the audit chain head per chain (node id), so a cut audit log shows
    CREATE TABLE audit_heads (
        chain TEXT COLLATE "C" PRIMARY KEY,
        count BIGINT NOT NULL,
        mac BYTEA NOT NULL
    );
    -- the shared replay cache (firmware.store.replay): UNLOGGED, so that no WAL is written per
    -- request; a crash empties both tables together, which the epoch row's absence reveals
    CREATE UNLOGGED TABLE replay_cache (
        key BYTEA PRIMARY KEY,
        until DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX replay_cache_until ON replay_cache(until);
    CREATE UNLOGGED TABLE replay_epoch (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        since DOUBLE PRECISION NOT NULL
    );
    """,
    # 2: when a key version was activated (a cluster rotation stages a version first, until
    # every node's HSM holds it); versions recorded before were active from their creation
    """
    ALTER TABLE key_versions ADD COLUMN activated DOUBLE PRECISION;
    UPDATE key_versions SET activated = created;
    """,
    # 3: the audit chains of a cluster (firmware/audit/pgmedium.py): one hash chain per node
    # (chain = node id), each record's canonical line under its seq; each chain's signed head
    # (its state store head is its audit_heads row); what accept-gap set aside as evidence.
    """
    CREATE TABLE audit_records (
        chain TEXT COLLATE "C" NOT NULL,
        seq BIGINT NOT NULL,
        record BYTEA NOT NULL,
        PRIMARY KEY (chain, seq)
    );
    CREATE TABLE audit_signed_heads (
        chain TEXT COLLATE "C" PRIMARY KEY,
        head BYTEA NOT NULL
    );
    CREATE TABLE audit_rejected (
        chain TEXT COLLATE "C" NOT NULL,
        gap BIGINT NOT NULL,  -- seq of the AUDIT_GAP record that set it aside
        seq BIGINT,  -- the row's seq; NULL: the chain's signed head
        content BYTEA NOT NULL
    );
    """,
    # 4: ETSI X1 tasks are warrants with an XID (unique when set), the DIDs their DF2
    # identities came from and their DeliveryType; X1 destinations
    """
    ALTER TABLE warrants ADD COLUMN xid TEXT COLLATE "C" NOT NULL DEFAULT '';
    ALTER TABLE warrants ADD COLUMN dids TEXT[] COLLATE "C" NOT NULL DEFAULT '{}';
    ALTER TABLE warrants ADD COLUMN delivery_type TEXT COLLATE "C" NOT NULL DEFAULT '';
    CREATE UNIQUE INDEX warrants_xid ON warrants(xid) WHERE xid <> '';
    CREATE TABLE x1_destinations (
        did TEXT COLLATE "C" PRIMARY KEY,
        friendly_name TEXT COLLATE "C" NOT NULL,
        delivery_type TEXT COLLATE "C" NOT NULL,
        address TEXT COLLATE "C" NOT NULL
    );
    """,
)

_USER_SELECT = (
    "SELECT u.identity, u.psk_id, u.kek_version, u.wrapped_psk,"
    " ARRAY(SELECT a.identity FROM identities a WHERE a.user_id = u.id AND a.is_alias"
    " ORDER BY a.identity) FROM users u"
)


class PostgresStore:
    """Store port on a PostgreSQL database shared by every node."""

    def __init__(
        self,
        url: str,
        password: str | None = None,
        *,
        audit_chain: str = "node",
        min_connections: int = 2,
        max_connections: int = 8,
        timeout: float = 2.0,
        reconnect_timeout: float = 5.0,
        statement_timeout: float = 10.0,
    ) -> None:
        """`url`: a libpq URL or key=value string without a password; `password` from
        read_password(). `timeout` bounds the wait for a pooled connection (then
        StoreUnavailable); `statement_timeout` bounds one statement on the server."""
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error:
            raise ConfigError("[store] url is not a valid PostgreSQL connection URL") from None
        if "password" in params:
            raise ConfigError(
                "[store] url must not carry a password: give it in a file or a systemd credential"
            )
        kwargs: dict[str, Any] = {
            "connect_timeout": max(2, int(timeout)),
            "application_name": "kmsnode",
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": int(statement_timeout * 1000),
            "options": f"-c statement_timeout={int(statement_timeout * 1000)}",
        }
        kwargs = {k: v for k, v in kwargs.items() if k not in params}
        kwargs["autocommit"] = True
        if password is not None:
            kwargs["password"] = password
        self.audit_chain = audit_chain
        self._url, self._kwargs = url, kwargs
        self._checking = threading.Lock()
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=min_connections,
            max_size=max_connections,
            timeout=timeout,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=lambda _pool: log.warning("state store: reconnection failed"),
            open=False,
            name="kmsnode-store",
        )
        # Migrate on a connection of its own first: a server that is not there, or a refused
        # login, fails the start at once instead of after the pool's reconnection attempts.
        try:
            with psycopg.connect(url, **kwargs) as conn:
                self._migrate(conn)
            self._pool.open(wait=True, timeout=timeout)
        except psycopg.Error as exc:
            self._pool.close()
            raise _unavailable(exc) from None
        except BaseException:
            self._pool.close()
            raise

    # --- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        """A pooled connection (autocommit) whose driver errors surface as store errors."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.errors.UniqueViolation:
            raise StoreConflict("the write would break a uniqueness rule") from None
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                self._check_soon()
            raise _unavailable(exc) from None

    def dedicated(self) -> Conn:
        """A new connection of its own, outside the pool (autocommit): for a session that lives
        long (LISTEN, an advisory lock held for a writer's life). The caller closes it; driver
        errors are its to handle (psycopg.Error)."""
        return psycopg.connect(self._url, **self._kwargs)

    def ping(self) -> bool:
        """True when a pooled connection answers now (the node's health probe)."""
        try:
            self._rows("SELECT 1")
        except StoreUnavailable:
            return False
        return True

    def _check_soon(self) -> None:
        """The server went away or restarted: drop every dead idle connection now, so that the
        requests after it do not fail one by one on them. In a thread of its own: a probe of a
        host that vanished waits for the TCP timeout, and no request may wait for it."""
        if not self._checking.acquire(blocking=False):
            return  # one check at a time covers every idle connection

        def check() -> None:
            try:
                self._pool.check()
            except Exception as exc:  # the pool closed meanwhile: nothing left to check
                log.debug("state store pool check failed: %s", type(exc).__name__)
            finally:
                self._checking.release()

        threading.Thread(target=check, name="store-pool-check", daemon=True).start()

    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        with self.connection() as conn, conn.transaction():
            yield conn

    def _rows(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self.connection() as conn:
            return conn.execute(sql, args).fetchall()

    def _rowcount(self, sql: str, args: Sequence[object]) -> int:
        with self.connection() as conn:
            return conn.execute(sql, args).rowcount

    @staticmethod
    def _migrate(conn: Conn) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
            )
            row = conn.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
            version = int(row[0]) if row else 0
            if version > len(MIGRATIONS):
                raise SchemaNewerThanCode(
                    f"state database schema {version} is newer than this node ({len(MIGRATIONS)})"
                )
            for target in range(version, len(MIGRATIONS)):
                conn.execute(MIGRATIONS[target].encode())  # several statements, no parameters
            conn.execute(
                "INSERT INTO schema_version VALUES (1, %s)"
                " ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
                (len(MIGRATIONS),),
            )

    @property
    def schema_version(self) -> int:
        return int(self._rows("SELECT version FROM schema_version WHERE id = 1")[0][0])

    def close(self) -> None:
        self._pool.close()

    # --- users ------------------------------------------------------------------------------

    def put_user(self, user: User) -> None:
        check_user(user)
        identities = sorted(user.identities)
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_USERS_LOCK,))
            row = conn.execute(
                "SELECT i.identity FROM identities i JOIN users u ON u.id = i.user_id"
                " WHERE i.identity = ANY(%s) AND u.identity <> %s ORDER BY i.identity LIMIT 1",
                (identities, user.identity),
            ).fetchone()
            if row:
                raise StoreConflict(f"identity {row[0]} belongs to another user")
            row = conn.execute(
                "SELECT 1 FROM users WHERE psk_id = %s AND identity <> %s",
                (user.psk_id, user.identity),
            ).fetchone()
            if row:
                raise StoreConflict("the PSK id belongs to another user")
            conn.execute("DELETE FROM users WHERE identity = %s", (user.identity,))
            conn.execute(
                "WITH u AS (INSERT INTO users (identity, psk_id, kek_version, wrapped_psk)"
                " VALUES (%s, %s, %s, %s) RETURNING id)"
                " INSERT INTO identities (identity, user_id, is_alias)"
                " SELECT i, u.id, i <> %s FROM u, unnest(%s::text[]) AS i",
                (
                    user.identity,
                    user.psk_id,
                    user.wrapped_psk.kek_version,
                    user.wrapped_psk.blob,
                    user.identity,
                    [user.identity, *user.aliases],
                ),
            )

    def delete_user(self, identity: str) -> bool:
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_USERS_LOCK,))
            return conn.execute("DELETE FROM users WHERE identity = %s", (identity,)).rowcount > 0

    @staticmethod
    def _user(row: tuple[Any, ...]) -> User:
        return User(
            identity=row[0],
            aliases=tuple(row[4]),
            psk_id=bytes(row[1]),
            wrapped_psk=WrappedKey(kek_version=int(row[2]), blob=bytes(row[3])),
        )

    def user_by_psk_id(self, psk_id: bytes) -> User | None:
        rows = self._rows(_USER_SELECT + " WHERE u.psk_id = %s", (psk_id,))
        return self._user(rows[0]) if rows else None

    def user_by_identity(self, identity: str) -> User | None:
        rows = self._rows(
            _USER_SELECT + " JOIN identities i ON i.user_id = u.id WHERE i.identity = %s",
            (identity,),
        )
        return self._user(rows[0]) if rows else None

    def list_users(self) -> list[User]:
        rows = self._rows(_USER_SELECT + " ORDER BY u.identity")
        return [self._user(r) for r in rows]

    def count_users(self) -> int:
        return int(self._rows("SELECT count(*) FROM users")[0][0])

    def advance_counter(self, identity: str, value: int) -> bool:
        rows = self._rows(
            "INSERT INTO counters AS c (identity, value) VALUES (%s, %s)"
            " ON CONFLICT (identity) DO UPDATE SET value = EXCLUDED.value"
            " WHERE c.value < EXCLUDED.value RETURNING 1",
            (identity, counter_key(value)),
        )
        return bool(rows)

    # --- resolutions ------------------------------------------------------------------------

    def add_resolution(self, resolution: Resolution) -> None:
        r = resolution
        self._rowcount(
            "INSERT INTO resolutions (ticket_id, responder, randr_kms, resolved_at, id_data)"
            " VALUES (%s, %s, %s, %s, %s)",
            (r.ticket_id, r.responder, r.randr_kms, r.resolved_at, r.id_data),
        )

    def resolutions(self, ticket_id: bytes) -> list[Resolution]:
        rows = self._rows(
            "SELECT responder, randr_kms, resolved_at, id_data FROM resolutions"
            " WHERE ticket_id = %s ORDER BY resolved_at, id",
            (ticket_id,),
        )
        return [Resolution(ticket_id, r[0], bytes(r[1]), float(r[2]), bytes(r[3])) for r in rows]

    # --- warrants ---------------------------------------------------------------------------

    def put_warrant(self, warrant: Warrant) -> None:
        check_warrant(warrant)
        w = warrant
        self._rowcount(
            "INSERT INTO warrants (liid, target, valid_from, valid_until, df2_identities, xid,"
            " dids, delivery_type) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (liid) DO UPDATE SET target = EXCLUDED.target,"
            " valid_from = EXCLUDED.valid_from, valid_until = EXCLUDED.valid_until,"
            " df2_identities = EXCLUDED.df2_identities, xid = EXCLUDED.xid,"
            " dids = EXCLUDED.dids, delivery_type = EXCLUDED.delivery_type",
            (
                w.liid,
                w.target,
                w.valid_from,
                w.valid_until,
                list(w.df2_identities),
                w.xid,
                list(w.dids),
                w.delivery_type,
            ),
        )

    def delete_warrant(self, liid: str) -> bool:
        return self._rowcount("DELETE FROM warrants WHERE liid = %s", (liid,)) > 0

    _WARRANT = (
        "SELECT liid, target, valid_from, valid_until, df2_identities, xid, dids, delivery_type"
        " FROM warrants"
    )

    @staticmethod
    def _warrant(row: tuple[Any, ...]) -> Warrant:
        return Warrant(
            row[0],
            row[1],
            float(row[2]),
            float(row[3]),
            tuple(row[4]),
            row[5],
            tuple(row[6]),
            row[7],
        )

    def list_warrants(self) -> list[Warrant]:
        return [self._warrant(r) for r in self._rows(self._WARRANT + " ORDER BY liid")]

    def warrants_for(self, target: str) -> list[Warrant]:
        rows = self._rows(self._WARRANT + " WHERE target = %s ORDER BY liid", (target,))
        return [self._warrant(r) for r in rows]

    # --- X1 destinations --------------------------------------------------------------------

    def put_destination(self, destination: Destination) -> None:
        check_destination(destination)
        d = destination
        self._rowcount(
            "INSERT INTO x1_destinations (did, friendly_name, delivery_type, address)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (did) DO UPDATE SET"
            " friendly_name = EXCLUDED.friendly_name, delivery_type = EXCLUDED.delivery_type,"
            " address = EXCLUDED.address",
            (d.did, d.friendly_name, d.delivery_type, d.address),
        )

    def delete_destination(self, did: str) -> bool:
        return self._rowcount("DELETE FROM x1_destinations WHERE did = %s", (did,)) > 0

    def list_destinations(self) -> list[Destination]:
        rows = self._rows(
            "SELECT did, friendly_name, delivery_type, address FROM x1_destinations ORDER BY did"
        )
        return [Destination(*(str(v) for v in r)) for r in rows]

    # --- audit chain head -------------------------------------------------------------------

    def audit_head(self) -> tuple[int, bytes] | None:
        rows = self._rows(
            "SELECT count, mac FROM audit_heads WHERE chain = %s", (self.audit_chain,)
        )
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    def set_audit_head(self, count: int, mac: bytes, durable: bool = True) -> None:
        # Always durable (a node on PostgreSQL keeps its chain in PostgresMedium, whose heads
        # are committed with the records). The check is in the writing statement, so two
        # writers cannot both pass it.
        rows = self._rows(
            "INSERT INTO audit_heads AS h (chain, count, mac) VALUES (%s, %s, %s)"
            " ON CONFLICT (chain) DO UPDATE SET count = EXCLUDED.count, mac = EXCLUDED.mac"
            " WHERE h.count < EXCLUDED.count OR (h.count = EXCLUDED.count AND h.mac = EXCLUDED.mac)"
            " RETURNING 1",
            (self.audit_chain, count, mac),
        )
        if not rows:
            kept = self.audit_head()
            assert kept is not None  # the upsert only refuses over a stored row
            raise audit_head_regression(kept, count, mac)

    # --- key versions -----------------------------------------------------------------------

    def record_key(self, record: KeyRecord) -> None:
        self._rowcount(
            "INSERT INTO key_versions (name, version, created, retired, destroyed, activated)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name, version) DO UPDATE SET"
            " created = EXCLUDED.created, retired = EXCLUDED.retired,"
            " destroyed = EXCLUDED.destroyed, activated = EXCLUDED.activated",
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
        rows = self._rows(
            "SELECT version, created, retired, destroyed, activated FROM key_versions"
            " WHERE name = %s ORDER BY version",
            (name.value,),
        )
        return [KeyRecord(name, int(r[0]), float(r[1]), r[2], r[3], r[4]) for r in rows]


def _unavailable(exc: psycopg.Error) -> StoreUnavailable:
    """The store error for a driver error: its class and SQLSTATE, no server text (which can
    name hosts and values); the server text goes to the log for the operator."""
    log.warning("state store error: %s: %s", type(exc).__name__, str(exc).splitlines()[:1])
    state = f", SQLSTATE {exc.sqlstate}" if exc.sqlstate else ""
    return StoreUnavailable(f"state store unavailable ({type(exc).__name__}{state})")
