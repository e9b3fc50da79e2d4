"""What only the PostgreSQL store does: the password path, outages, nodes migrating together."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from firmware.core.errors import ConfigError, StoreUnavailable
from firmware.core.ports import Resolution
from firmware.store.postgres import MIGRATIONS, PostgresStore, read_password
from tests.pg import PASSWORD, PASSWORD_ROLE, PgServer, _free_port


def _serving_again(store: PostgresStore, deadline: float) -> int:
    """count_users() once the server answers again; each failed try waits out the pool timeout,
    so this is a bounded wait, not a busy loop."""
    while True:
        try:
            return store.count_users()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise


def test_unavailable_while_postgresql_is_stopped_and_serving_again_after_restart(
    pg_server: PgServer, pg_url: str
) -> None:
    store = PostgresStore(pg_url, timeout=1.0)
    other = PostgresStore(pg_url, timeout=1.0)
    r = Resolution(b"t", "sip:bob@x.net", b"", 1.0)
    store.add_resolution(r)
    pg_server.stop()
    try:
        for call in (
            lambda: store.resolutions(b"t"),
            lambda: store.add_resolution(r),
            lambda: store.advance_counter("sip:alice@x.net", 1),
            lambda: store.user_by_psk_id(b"x"),
            lambda: other.set_audit_head(1, b"m"),
        ):
            with pytest.raises(StoreUnavailable) as caught:
                call()
            assert not isinstance(caught.value, psycopg.Error)
            assert "127.0.0.1" not in str(caught.value)
    finally:
        pg_server.start()
    deadline = time.monotonic() + 60
    assert _serving_again(store, deadline) == 0
    assert _serving_again(other, deadline) == 0
    assert store.resolutions(b"t") == [r]  # what was acknowledged before is there
    assert other.advance_counter("sip:alice@x.net", 1)  # the failed write left nothing
    store.close()
    other.close()


def test_a_server_that_is_not_there_at_start_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        PostgresStore(f"postgresql://postgres@127.0.0.1:{_free_port()}/kms", timeout=0.5)


def test_nodes_starting_together_on_an_empty_database_migrate_it_once(pg_url: str) -> None:
    start = threading.Barrier(4)

    def open_store(_: int) -> PostgresStore:
        start.wait(timeout=30)
        return PostgresStore(pg_url)

    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(open_store, range(4)))
    assert {s.schema_version for s in stores} == {len(MIGRATIONS)}
    for s in stores:
        s.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:secret-pw@127.0.0.1/kms",
        "postgresql://127.0.0.1/kms?password=secret-pw",
        "host=127.0.0.1 dbname=kms password=secret-pw",
    ],
)
def test_refuses_a_url_that_carries_a_password(url: str) -> None:
    with pytest.raises(ConfigError, match="must not carry a password") as caught:
        PostgresStore(url)
    assert "secret-pw" not in str(caught.value)


def test_refuses_a_url_that_is_not_one() -> None:
    with pytest.raises(ConfigError, match="not a valid"):
        PostgresStore("host=127.0.0.1 dbname='unterminated")


def test_logs_in_with_the_password_read_from_a_file(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    secret = tmp_path / "store-password"
    secret.write_text(PASSWORD + "\n")
    url = pg_url.replace("postgres@", f"{PASSWORD_ROLE}@", 1)
    store = PostgresStore(url, read_password(file=secret))
    assert store.count_users() == 0
    store.close()
    with pytest.raises(StoreUnavailable) as caught:
        PostgresStore(url, "wrong-password", timeout=0.5)
    assert "wrong-password" not in str(caught.value)
    with pytest.raises(StoreUnavailable):
        PostgresStore(url, timeout=0.5)  # no password at all


def test_audit_heads_of_two_chains_are_independent(pg_url: str) -> None:
    one, two = PostgresStore(pg_url, audit_chain="node-1"), PostgresStore(pg_url, audit_chain="n2")
    one.set_audit_head(5, b"m5")
    assert two.audit_head() is None
    two.set_audit_head(1, b"m1")
    assert one.audit_head() == (5, b"m5") and two.audit_head() == (1, b"m1")
    one.close()
    two.close()
