from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from firmware.core.ports import (
    KeyName,
    KeyRecord,
    Resolution,
    StoreConflict,
    User,
    Warrant,
    WrappedKey,
)
from firmware.store.sqlite import MIGRATIONS, SqliteStore


def _user(identity: str, *aliases: str, psk_id: bytes | None = None) -> User:
    return User(
        identity=identity,
        aliases=tuple(sorted(aliases)),
        psk_id=psk_id if psk_id is not None else identity.encode(),
        wrapped_psk=WrappedKey(1, b"\x01" * 24),
    )


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "state.sqlite")


def test_uses_wal_and_full_sync_and_current_schema(store: SqliteStore, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.schema_version == len(MIGRATIONS)


def test_finds_a_user_by_identity_alias_and_psk_id(store: SqliteStore) -> None:
    alice = _user("sip:alice@ims.example.net", "tel:+15551234567", psk_id=b"alice-psk")
    store.put_user(alice)
    assert store.user_by_identity("sip:alice@ims.example.net") == alice
    assert store.user_by_identity("tel:+15551234567") == alice
    assert store.user_by_psk_id(b"alice-psk") == alice
    assert store.user_by_identity("sip:bob@ims.example.net") is None
    assert store.count_users() == 1


def test_replacing_a_user_drops_its_old_aliases(store: SqliteStore) -> None:
    store.put_user(_user("sip:alice@x.net", "tel:+1555"))
    store.put_user(_user("sip:alice@x.net", "tel:+1666"))
    assert store.user_by_identity("tel:+1555") is None
    assert store.user_by_identity("tel:+1666") is not None
    assert [u.identity for u in store.list_users()] == ["sip:alice@x.net"]


def test_refuses_an_alias_owned_by_another_user_and_writes_nothing(store: SqliteStore) -> None:
    store.put_user(_user("sip:alice@x.net", "tel:+1555"))
    with pytest.raises(StoreConflict):
        store.put_user(_user("sip:bob@x.net", "tel:+1555"))
    assert store.user_by_identity("sip:bob@x.net") is None
    with pytest.raises(StoreConflict):
        store.put_user(_user("sip:bob@x.net", psk_id=b"sip:alice@x.net"))
    assert store.count_users() == 1


def test_delete_user_removes_its_identities(store: SqliteStore) -> None:
    store.put_user(_user("sip:alice@x.net", "tel:+1555"))
    assert store.delete_user("sip:alice@x.net")
    assert not store.delete_user("sip:alice@x.net")
    assert store.user_by_identity("tel:+1555") is None


def test_resolutions_warrants_and_key_records_round_trip(
    store: SqliteStore, tmp_path: Path
) -> None:
    r = Resolution(b"t" * 16, "sip:bob@x.net", b"r" * 16, 1000.0, b"sip:Bob@X.net")
    store.add_resolution(r)
    w = Warrant("LI-1", "sip:bob@x.net", 0.0, 2000.0, ("df2.li.example.net",))
    store.put_warrant(w)
    k = KeyRecord(KeyName.TICKET_PROTECTION, 1, 5.0, None, None)
    store.record_key(k)
    store.close()
    again = SqliteStore(tmp_path / "state.sqlite")
    assert again.resolutions(b"t" * 16) == [r]
    assert again.warrants_for("sip:bob@x.net") == [w]
    assert again.list_warrants() == [w]
    assert again.key_records(KeyName.TICKET_PROTECTION) == [k]
    assert again.delete_warrant("LI-1") and not again.delete_warrant("LI-1")


def test_refuses_a_database_newer_than_the_code(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        SqliteStore(path)
