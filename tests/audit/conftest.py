"""Fixtures of the audit tests on PostgreSQL: the suite's own server (tests/pg.py) and a fresh
database per test, migrated by a PostgresStore (which also gives verify its pooled connections).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from firmware.audit.log import AuditLog
from firmware.audit.pgmedium import PostgresMedium
from firmware.store.postgres import PostgresStore
from tests.pg import PgServer, pg_server

__all__ = ["pg_server"]

Conn = psycopg.Connection[tuple[Any, ...]]


class ChainDb:
    """One test database holding audit chains; `sql` tampers with it as a database user could."""

    def __init__(self, server: PgServer, name: str) -> None:
        self.server, self.name, self.url = server, name, server.url(name)
        self.store = PostgresStore(self.url, timeout=1.0)

    def connect(self) -> Conn:
        return psycopg.connect(self.url, autocommit=True, connect_timeout=2)

    def medium(self, chain: str) -> PostgresMedium:
        return PostgresMedium(self.connect, chain)

    def log(self, chain: str, mac: Any, **kwargs: Any) -> AuditLog:
        return AuditLog(self.medium(chain), mac, **kwargs)

    def sql(self, query: str, args: Any = ()) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(query, args)
            return cur.fetchall() if cur.description else []

    def rows(self, chain: str) -> list[tuple[int, bytes]]:
        return [
            (int(seq), bytes(record))
            for seq, record in self.sql(
                "SELECT seq, record FROM audit_records WHERE chain = %s ORDER BY seq", (chain,)
            )
        ]

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def chain_db(pg_server: PgServer) -> Iterator[ChainDb]:
    name = pg_server.database()
    db = ChainDb(pg_server, name)
    try:
        yield db
    finally:
        db.close()
        pg_server.drop(name)
