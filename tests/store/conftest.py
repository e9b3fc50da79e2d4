"""Fixtures of the store contract suite: every contract test runs on SQLite and on PostgreSQL.

`backend` is parametrised over both stores; `backend.open()` gives a new store instance on the
test's own database (a second call: a second node on the same database). Every instance is
closed after the test; the PostgreSQL database is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from firmware.core.ports import Store
from firmware.store.postgres import PostgresStore
from firmware.store.sqlite import SqliteStore
from tests.pg import PgServer, pg_server

__all__ = ["pg_server"]


class ClosableStore(Store, Protocol):
    def close(self) -> None: ...


class Backend:
    """One test database of one kind, and the stores opened on it."""

    def __init__(self, kind: str, opener: Callable[[], ClosableStore], bump: Callable[[int], None]):
        self.kind = kind
        self._opener = opener
        self._bump = bump
        self.opened: list[ClosableStore] = []

    def open(self) -> ClosableStore:
        store = self._opener()
        self.opened.append(store)
        return store

    def set_schema_version(self, version: int) -> None:
        """Mark the database as migrated to `version` (as a newer node would)."""
        self._bump(version)

    def close(self) -> None:
        for store in self.opened:
            store.close()


def _sqlite(path: Path) -> Backend:
    import sqlite3

    def bump(version: int) -> None:
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version={version}")
        db.commit()
        db.close()

    return Backend("sqlite", lambda: SqliteStore(path), bump)


def _postgres(server: PgServer, name: str) -> Backend:
    def bump(version: int) -> None:
        import psycopg

        with psycopg.connect(server.url(name), autocommit=True) as conn:
            conn.execute("UPDATE schema_version SET version = %s", (version,))

    return Backend("postgres", lambda: PostgresStore(server.url(name)), bump)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        b = _sqlite(tmp_path / "state.sqlite")
        try:
            yield b
        finally:
            b.close()
        return
    server: PgServer = request.getfixturevalue("pg_server")
    name = server.database()
    b = _postgres(server, name)
    try:
        yield b
    finally:
        b.close()
        server.drop(name)


@pytest.fixture
def store(backend: Backend) -> ClosableStore:
    return backend.open()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a new empty PostgreSQL database (dropped after the test)."""
    name = pg_server.database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop(name)
