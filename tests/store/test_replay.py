"""The shared replay cache keeps the in-memory cache's contract (run on both), and across nodes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import psycopg
import pytest

from firmware.core.freshness import ReplayCache, StaleTimestamp
from firmware.store.postgres import PostgresStore
from firmware.store.replay import PostgresReplayCache

NOW = 1_700_000_000.0


class Cache(Protocol):
    started_at: float

    def check_time(self, stamp: float, now: float) -> None: ...

    def admit(self, key: bytes, stamp: float, now: float) -> None: ...

    def __len__(self) -> int: ...


MakeCache = Callable[..., Cache]


@pytest.fixture
def pg_caches(pg_url: str) -> Iterator[Callable[..., PostgresReplayCache]]:
    """PostgresReplayCache factory: each call is another node (own store and pool)."""
    opened: list[tuple[PostgresReplayCache, PostgresStore]] = []

    def make(skew: float, started_at: float, capacity: int = 1_000_000) -> PostgresReplayCache:
        store = PostgresStore(pg_url)
        cache = PostgresReplayCache(store, skew, started_at, capacity, clock=lambda: NOW)
        opened.append((cache, store))
        return cache

    yield make
    for cache, store in opened:
        cache.close()
        store.close()


@pytest.fixture(params=["memory", "postgres"])
def make_cache(request: pytest.FixtureRequest) -> MakeCache:
    if request.param == "memory":
        return ReplayCache
    factory: MakeCache = request.getfixturevalue("pg_caches")
    return factory


def test_refuses_a_timestamp_outside_the_window(make_cache: MakeCache) -> None:
    cache = make_cache(60, NOW - 3600)
    cache.check_time(NOW - 59, NOW)
    cache.check_time(NOW + 60, NOW)
    with pytest.raises(StaleTimestamp):
        cache.check_time(NOW - 61, NOW)
    with pytest.raises(StaleTimestamp):
        cache.check_time(NOW + 61, NOW)


def test_refuses_a_timestamp_from_before_the_start(make_cache: MakeCache) -> None:
    cache = make_cache(60, NOW)
    with pytest.raises(StaleTimestamp):
        cache.check_time(NOW - 1, NOW + 1)
    cache.check_time(NOW + 0.5, NOW + 1)


def test_admits_a_message_once_and_refuses_its_replay(make_cache: MakeCache) -> None:
    cache = make_cache(60, 0)
    cache.admit(b"mac-1", NOW, NOW)
    with pytest.raises(StaleTimestamp, match="replayed"):
        cache.admit(b"mac-1", NOW, NOW + 30)
    cache.admit(b"mac-2", NOW, NOW)
    assert len(cache) == 2


def test_forgets_an_entry_once_its_timestamp_left_the_window(make_cache: MakeCache) -> None:
    cache = make_cache(60, 0)
    cache.admit(b"mac-1", NOW, NOW)
    cache.admit(b"mac-1", NOW + 200, NOW + 200)  # the first one expired at NOW + 60
    with pytest.raises(StaleTimestamp, match="replayed"):
        cache.admit(b"mac-1", NOW + 200, NOW + 259)


def test_a_full_cache_refuses_new_messages(make_cache: MakeCache) -> None:
    cache = make_cache(60, 0, capacity=2)
    cache.admit(b"a", NOW, NOW)
    cache.admit(b"b", NOW, NOW)
    with pytest.raises(StaleTimestamp, match="full"):
        cache.admit(b"c", NOW, NOW)


# --- across nodes (PostgreSQL only) -------------------------------------------------------------


def test_a_message_admitted_on_one_node_is_a_replay_on_another(
    pg_caches: Callable[..., PostgresReplayCache],
) -> None:
    one, two = pg_caches(60, 0), pg_caches(60, 0)
    one.admit(b"mac-1", NOW, NOW)
    with pytest.raises(StaleTimestamp, match="replayed"):
        two.admit(b"mac-1", NOW, NOW + 1)
    two.admit(b"mac-2", NOW, NOW)
    with pytest.raises(StaleTimestamp, match="replayed"):
        one.admit(b"mac-2", NOW, NOW)


def test_a_node_started_later_keeps_the_clusters_epoch(
    pg_caches: Callable[..., PostgresReplayCache],
) -> None:
    first = pg_caches(60, NOW - 100)
    later = pg_caches(60, NOW)  # its restart does not empty the shared cache: no new epoch
    assert later.started_at == first.started_at == NOW - 100
    later.check_time(NOW - 50, NOW)


def test_an_emptied_cache_starts_a_new_epoch_and_refuses_what_it_may_have_admitted(
    pg_url: str, pg_caches: Callable[..., PostgresReplayCache]
) -> None:
    one, two = pg_caches(60, 0), pg_caches(60, 0)
    one.admit(b"mac-1", NOW + 30, NOW)  # stamped ahead of the clock, within the skew
    with psycopg.connect(pg_url, autocommit=True) as conn:  # what a crash does to UNLOGGED tables
        conn.execute("TRUNCATE replay_cache, replay_epoch")
    with pytest.raises(StaleTimestamp, match="start"):
        two.admit(b"mac-1", NOW + 30, NOW + 5)  # the replay after the loss
    assert two.started_at == NOW + 5 + 60
    with pytest.raises(StaleTimestamp, match="start"):
        one.admit(b"mac-9", NOW + 30, NOW + 6)  # the other node learns the epoch too
    assert one.started_at == NOW + 65
    one.admit(b"mac-2", NOW + 66, NOW + 66)


def test_purge_deletes_expired_entries_only(
    pg_caches: Callable[..., PostgresReplayCache],
) -> None:
    cache = pg_caches(60, 0, capacity=2)
    cache.admit(b"old", NOW, NOW)
    cache.admit(b"new", NOW + 50, NOW + 50)
    with pytest.raises(StaleTimestamp, match="full"):
        cache.admit(b"c", NOW + 61, NOW + 61)
    assert cache.purge(NOW + 61) == 1
    assert len(cache) == 1
    cache.admit(b"c", NOW + 61, NOW + 61)  # room again after the purge
    assert cache.purge(NOW + 61) == 2  # "new" is still there
