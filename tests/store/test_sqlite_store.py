"""What only the SQLite store does: WAL, file modes, migrations of old rows, lock timeouts."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware.core.errors import StoreUnavailable
from firmware.core.ports import Resolution, Warrant
from firmware.store.sqlite import MIGRATIONS, SqliteStore


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_uses_wal_and_full_sync(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.sqlite")
    db = sqlite3.connect(tmp_path / "state.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_a_lazy_audit_head_is_committed_without_a_sync_and_the_full_sync_comes_back(
    tmp_path: Path,
) -> None:
    """The audit log's heads between two syncs (firmware/audit/filemedium.py): committed with
    synchronous=NORMAL (no fsync in WAL mode), every other write still with FULL."""
    store = SqliteStore(tmp_path / "state.sqlite")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.set_audit_head(1, b"m1", durable=False)
    assert statements[0] == "PRAGMA synchronous=NORMAL"
    assert store.audit_head() == (1, b"m1")
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    statements.clear()
    store.set_audit_head(2, b"m2")
    assert not any("synchronous" in s for s in statements)
    store.close()


def test_state_files_are_0600_under_a_permissive_umask_in_an_open_folder(
    tmp_path: Path, permissive_umask: None
) -> None:
    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)
    path = folder / "state.sqlite"
    store = SqliteStore(path)
    store.add_resolution(Resolution(b"t", "sip:b@x.net", b"", 1.0))  # the WAL exists now
    assert store.resolutions(b"t")  # a reader: the -shm exists too
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    store.close()


def test_brings_a_world_readable_state_file_back_to_0600(
    tmp_path: Path, permissive_umask: None
) -> None:
    path = tmp_path / "state.sqlite"
    SqliteStore(path).close()
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        f.touch()
        f.chmod(0o644)
    SqliteStore(path).close()
    assert _mode(path) == 0o600
    for f in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert not f.exists() or _mode(f) == 0o600


def _old_database(path: Path, version: int) -> sqlite3.Connection:
    """A database as a node of schema `version` left it."""
    db = sqlite3.connect(path, isolation_level=None)
    for step in MIGRATIONS[:version]:
        if callable(step):
            step(db)
        else:
            db.executescript(step)
    db.execute(f"PRAGMA user_version={version}")
    return db


def test_migration_turns_newline_joined_df2_identities_into_a_list(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    db = _old_database(path, 4)
    db.execute("INSERT INTO warrants VALUES ('LI-1', 'sip:bob@x.net', 0, 10, ?)", ("df2-a\ndf2-b",))
    db.execute("INSERT INTO warrants VALUES ('LI-2', 'sip:bob@x.net', 0, 10, '')")
    db.close()
    store = SqliteStore(path)
    assert store.list_warrants() == [
        Warrant("LI-1", "sip:bob@x.net", 0.0, 10.0, ("df2-a", "df2-b")),
        Warrant("LI-2", "sip:bob@x.net", 0.0, 10.0, ()),
    ]
    store.close()


def test_migration_keeps_the_order_of_counters_stored_before(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    db = _old_database(path, 5)
    db.execute("INSERT INTO counters VALUES ('sip:alice@x.net', 7)")
    db.close()
    store = SqliteStore(path)
    assert not store.advance_counter("sip:alice@x.net", 7)
    assert store.advance_counter("sip:alice@x.net", 8)
    store.close()


def test_a_database_locked_past_the_timeout_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    store = SqliteStore(path, timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable):
            store.advance_counter("sip:alice@x.net", 1)
        with pytest.raises(StoreUnavailable):
            store.add_resolution(Resolution(b"t", "sip:b@x.net", b"", 1.0))
    finally:
        other.execute("ROLLBACK")
    assert store.advance_counter("sip:alice@x.net", 1)  # nothing of the failed write remains
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.add_resolution(Resolution(b"t", "sip:b@x.net", b"", 1.0))
