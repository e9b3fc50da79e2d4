"""The replay cache shared by every node: PostgreSQL stand-in for core.freshness.ReplayCache.

Same methods and semantics as ReplayCache (`check_time`, `admit`, `started_at`, `skew`,
`capacity`, `len()`), with the entries in PostgreSQL so that a message admitted on one node is a
replay on every other.

Rules:
- One round trip per admitted message: one statement inserts the key unless a live entry holds
  it (`INSERT ... ON CONFLICT DO UPDATE ... WHERE until < now RETURNING`: an expired entry is
  replaced, as the in-memory cache forgets it) and reads the cache's epoch in the same snapshot.
  `check_time` needs no round trip.
- The key is what the core gives `admit` (today the message MAC, as for the in-memory cache:
  the MAC covers the sender, T and RAND under the sender's PSK, so equal keys are the same
  message); an entry is kept until max(T, now) + skew, after which the window check alone
  refuses a replay.
- The tables are UNLOGGED (no WAL per request). PostgreSQL empties them after a crash or on a
  promoted standby; the epoch row (in an UNLOGGED table too) vanishes with the entries, so its
  absence proves the loss. Then the epoch is set to now + skew and every message stamped before
  it is refused: such a message may have been admitted before the loss (it can have been
  stamped up to `skew` ahead of the clock that admitted it).
- A fresh cluster's epoch is the first node's `started_at`; later nodes take the stored epoch,
  so a node's restart does not reset the cluster's cache (the entries are still there).
- Expired entries are purged by a background thread every `purge_interval` seconds (any node
  may purge; deleting expired rows twice is harmless). The purge also counts the live entries:
  a full cache refuses new messages (fail closed). Between purges the count is this node's
  estimate (count at the last purge plus what it admitted since), so other nodes' admissions
  are seen at the next purge: the bound may be exceeded by what the others admit in one
  interval.
- Store failures raise StoreUnavailable (the request is refused, never admitted unchecked).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from firmware.core.errors import StoreUnavailable
from firmware.core.freshness import StaleTimestamp
from firmware.store.postgres import PostgresStore

log = logging.getLogger("kmsnode.store")

_ADMIT = """
WITH e AS (SELECT since FROM replay_epoch WHERE id = 1),
ins AS (
    INSERT INTO replay_cache AS c (key, until)
    SELECT %(key)s, %(until)s FROM e WHERE e.since <= %(stamp)s
    ON CONFLICT (key) DO UPDATE SET until = EXCLUDED.until WHERE c.until < %(now)s
    RETURNING 1
)
SELECT (SELECT since FROM e), (SELECT count(*) FROM ins)
"""


class PostgresReplayCache:
    """Thread-safe, cluster-wide memory of authenticated messages inside the window."""

    def __init__(
        self,
        store: PostgresStore,
        skew: float,
        started_at: float,
        capacity: int = 1_000_000,
        *,
        purge_interval: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`purge_interval` defaults to skew / 4 (at least 1 s); None of the background purge
        is needed for correctness, only for the table's size."""
        self.skew = skew
        self.capacity = capacity
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._estimate = 0
        self.started_at = self._epoch(started_at)
        self.purge(clock())
        self._stop = threading.Event()
        interval = purge_interval if purge_interval is not None else max(1.0, skew / 4)
        self._purger = threading.Thread(
            target=self._purge_loop, args=(interval,), name="replay-purge", daemon=True
        )
        self._purger.start()

    def _epoch(self, since: float) -> float:
        """The stored epoch, first setting it to `since` when there is none."""
        with self._store.connection() as conn:
            conn.execute(
                "INSERT INTO replay_epoch VALUES (1, %s) ON CONFLICT (id) DO NOTHING", (since,)
            )
            row = conn.execute("SELECT since FROM replay_epoch WHERE id = 1").fetchone()
        assert row is not None
        return float(row[0])

    def check_time(self, stamp: float, now: float) -> None:
        """Refuse a clock timestamp outside the window or from before the cache's epoch."""
        if abs(stamp - now) > self.skew:
            raise StaleTimestamp("timestamp outside the allowed clock skew")
        if stamp < self.started_at:
            raise StaleTimestamp("timestamp precedes the replay cache's start (it was reset)")

    def admit(self, key: bytes, stamp: float, now: float) -> None:
        """Record an authenticated message; StaleTimestamp when any node saw it before or the
        cache is full. `key` identifies the message (e.g. its MAC); `stamp` its time."""
        with self._lock:
            if self._estimate >= self.capacity:
                raise StaleTimestamp("replay cache full; refusing until entries expire")
        until = max(stamp, now) + self.skew
        args = {"key": key, "until": until, "stamp": stamp, "now": now}
        with self._store.connection() as conn:
            row = conn.execute(_ADMIT, args).fetchone()
        assert row is not None
        since, inserted = row
        if since is None:  # the cache was emptied by a crash: start a new epoch and refuse
            self.started_at = self._epoch(now + self.skew)
            raise StaleTimestamp("timestamp precedes the replay cache's start (it was reset)")
        self.started_at = max(self.started_at, float(since))
        if not inserted:
            if stamp < float(since):
                raise StaleTimestamp("timestamp precedes the replay cache's start (it was reset)")
            raise StaleTimestamp("message replayed")
        with self._lock:
            self._estimate += 1

    def purge(self, now: float) -> int:
        """Delete the entries expired at `now`; returns how many live entries remain."""
        with self._store.connection() as conn:
            conn.execute("DELETE FROM replay_cache WHERE until < %s", (now,))
            row = conn.execute("SELECT count(*) FROM replay_cache").fetchone()
        assert row is not None
        with self._lock:
            self._estimate = int(row[0])
        return self._estimate

    def _purge_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.purge(self._clock())
            except StoreUnavailable as exc:
                log.warning("replay cache purge failed: %s", exc)

    def __len__(self) -> int:
        with self._store.connection() as conn:
            row = conn.execute("SELECT count(*) FROM replay_cache").fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        """Stop the background purge (the store stays open: it is the caller's)."""
        self._stop.set()
        self._purger.join()
