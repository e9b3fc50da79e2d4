"""The Store port's contract, run on every store (SQLite and PostgreSQL: conftest.backend)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from firmware.core.errors import AuditHeadRegression, InvalidRequest, SchemaNewerThanCode
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
from tests.store.conftest import Backend, ClosableStore


def _user(identity: str, *aliases: str, psk_id: bytes | None = None) -> User:
    return User(
        identity=identity,
        aliases=tuple(sorted(aliases)),
        psk_id=psk_id if psk_id is not None else identity.encode(),
        wrapped_psk=WrappedKey(1, b"\x01" * 24),
    )


def _resolution(ticket: bytes, responder: str = "sip:bob@x.net", at: float = 1000.0) -> Resolution:
    return Resolution(ticket, responder, b"r" * 16, at, b"sip:Bob@X.net")


# --- schema -----------------------------------------------------------------------------------


def test_migrates_an_empty_database_to_the_current_schema(backend: Backend) -> None:
    store = backend.open()
    from firmware.store import postgres, sqlite

    expected = len(sqlite.MIGRATIONS if backend.kind == "sqlite" else postgres.MIGRATIONS)
    assert store.schema_version == expected  # type: ignore[attr-defined]
    assert store.count_users() == 0 and store.list_warrants() == []
    store.close()
    assert backend.open().schema_version == expected  # type: ignore[attr-defined]


def test_refuses_a_database_newer_than_the_code(backend: Backend) -> None:
    current = backend.open().schema_version  # type: ignore[attr-defined]
    backend.set_schema_version(current + 1)
    with pytest.raises(SchemaNewerThanCode, match="newer"):
        backend.open()


# --- users ------------------------------------------------------------------------------------


def test_finds_a_user_by_identity_alias_and_psk_id(store: ClosableStore) -> None:
    alice = _user("sip:alice@ims.example.net", "tel:+15551234567", psk_id=b"alice-psk")
    store.put_user(alice)
    assert store.user_by_identity("sip:alice@ims.example.net") == alice
    assert store.user_by_identity("tel:+15551234567") == alice
    assert store.user_by_psk_id(b"alice-psk") == alice
    assert store.user_by_identity("sip:bob@ims.example.net") is None
    assert store.user_by_psk_id(b"sip:alice@ims.example.net") is None
    assert store.count_users() == 1


def test_replacing_a_user_drops_its_old_aliases(store: ClosableStore) -> None:
    store.put_user(_user("sip:alice@x.net", "tel:+1555"))
    store.put_user(_user("sip:alice@x.net", "tel:+1666"))
    assert store.user_by_identity("tel:+1555") is None
    assert store.user_by_identity("tel:+1666") is not None
    assert [u.identity for u in store.list_users()] == ["sip:alice@x.net"]


def test_refuses_an_alias_owned_by_another_user_and_writes_nothing(store: ClosableStore) -> None:
    store.put_user(_user("sip:alice@x.net", "tel:+1555"))
    with pytest.raises(StoreConflict):
        store.put_user(_user("sip:bob@x.net", "tel:+1555"))
    assert store.user_by_identity("sip:bob@x.net") is None
    with pytest.raises(StoreConflict):
        store.put_user(_user("sip:bob@x.net", psk_id=b"sip:alice@x.net"))
    with pytest.raises(StoreConflict):  # another user's main identity as an alias
        store.put_user(_user("sip:bob@x.net", "sip:alice@x.net"))
    assert store.count_users() == 1
    assert store.user_by_identity("tel:+1555") == _user("sip:alice@x.net", "tel:+1555")


def test_refuses_a_user_naming_one_identity_twice_and_writes_nothing(store: ClosableStore) -> None:
    with pytest.raises(StoreConflict):
        store.put_user(User("sip:alice@x.net", ("sip:alice@x.net",), b"a", WrappedKey(1, b"k")))
    assert store.count_users() == 0


def test_delete_user_removes_its_identities(store: ClosableStore) -> None:
    store.put_user(_user("sip:alice@x.net", "tel:+1555"))
    assert store.delete_user("sip:alice@x.net")
    assert not store.delete_user("sip:alice@x.net")
    assert store.user_by_identity("tel:+1555") is None
    store.put_user(_user("sip:bob@x.net", "tel:+1555"))  # the alias is free again
    assert store.user_by_identity("tel:+1555") == _user("sip:bob@x.net", "tel:+1555")


def test_lists_users_in_code_point_order_with_their_aliases(store: ClosableStore) -> None:
    users = [_user("sip:b@x.net", "tel:+2", "tel:+1"), _user("sip:B@x.net"), _user("sip:a@x.net")]
    for u in users:
        store.put_user(u)
    assert store.list_users() == sorted(users, key=lambda u: u.identity)
    assert store.count_users() == 3


def test_two_nodes_racing_for_one_alias_leave_it_with_one_owner(backend: Backend) -> None:
    a, b = backend.open(), backend.open()
    start = threading.Barrier(2)

    def put(store: ClosableStore, identity: str) -> bool:
        start.wait(timeout=30)
        try:
            store.put_user(_user(identity, "tel:+1555"))
        except StoreConflict:
            return False
        return True

    with ThreadPoolExecutor(2) as pool:
        won = list(pool.map(put, (a, b), ("sip:alice@x.net", "sip:bob@x.net")))
    assert sorted(won) == [False, True]
    owner = a.user_by_identity("tel:+1555")
    assert owner is not None and b.count_users() == 1
    assert owner.identity == ("sip:alice@x.net" if won[0] else "sip:bob@x.net")


def test_two_nodes_replacing_one_user_at_once_both_succeed(backend: Backend) -> None:
    nodes = [backend.open(), backend.open()]
    nodes[0].put_user(_user("sip:alice@x.net", "tel:+1"))

    def put(n: int, start: threading.Barrier, user: User) -> None:
        start.wait(timeout=30)
        nodes[n].put_user(user)

    for round in range(20):
        start = threading.Barrier(2)
        versions = [_user("sip:alice@x.net", f"tel:+{round}{n}") for n in (0, 1)]
        with ThreadPoolExecutor(2) as pool:  # a StoreConflict would be a spurious refusal
            list(pool.map(put, (0, 1), (start, start), versions))
        assert nodes[1].user_by_identity("sip:alice@x.net") in versions
        assert nodes[0].count_users() == 1


# --- values come back exactly as stored --------------------------------------------------------


def test_df2_identity_holding_a_newline_and_a_comma_round_trips_as_one_identity(
    backend: Backend,
) -> None:
    store = backend.open()
    df2 = ("df2.li.example.net\nsip:evil@x.net", "df2-b,df2-c")
    w = Warrant("LI-1", "sip:bob@x.net", 0.0, 2000.0, df2)
    store.put_warrant(w)
    assert store.warrants_for("sip:bob@x.net") == [w]
    assert backend.open().list_warrants() == [w]


def test_returns_user_and_warrant_values_exactly_as_stored(store: ClosableStore) -> None:
    odd = " sip:\u00e9ve@x.net\t"  # spaces, a tab, non-ASCII: nothing is stripped or folded
    user = _user(odd, " tel:+1 ", "tel:+1\n2", psk_id=b"\x00\xff\n")
    store.put_user(user)
    assert store.user_by_identity(odd) == user
    assert store.user_by_identity(" tel:+1 ") == user
    assert store.user_by_identity("tel:+1") is None
    assert store.user_by_psk_id(b"\x00\xff\n") == user
    w = Warrant(" LI 2 ", odd, -1.5, 1e12, (" df2 ", "", "df2"))
    store.put_warrant(w)
    assert store.warrants_for(odd) == [w]
    assert store.warrants_for(odd.strip()) == []


def test_refuses_text_one_of_the_stores_cannot_hold_and_writes_nothing(
    store: ClosableStore,
) -> None:
    with pytest.raises(InvalidRequest, match="NUL"):
        store.put_user(_user("sip:alice@x.net", "tel:+1\x00"))
    with pytest.raises(InvalidRequest, match="NUL"):
        store.put_warrant(Warrant("LI-1", "sip:bob@x.net", 0.0, 1.0, ("df2\x00",)))
    with pytest.raises(InvalidRequest, match="Unicode"):
        store.put_warrant(Warrant("LI-\udc80", "sip:bob@x.net", 0.0, 1.0, ("df2",)))
    assert store.count_users() == 0 and store.list_warrants() == []


# --- COUNTER timestamps -----------------------------------------------------------------------


def test_counter_must_strictly_increase_per_user_over_the_whole_64_bit_range(
    store: ClosableStore,
) -> None:
    assert store.advance_counter("sip:alice@x.net", 5)
    assert not store.advance_counter("sip:alice@x.net", 5)
    assert not store.advance_counter("sip:alice@x.net", 4)
    assert store.advance_counter("sip:bob@x.net", 0)  # another user's counter is its own
    assert store.advance_counter("sip:alice@x.net", 1 << 63)
    assert not store.advance_counter("sip:alice@x.net", (1 << 63) - 1)
    assert store.advance_counter("sip:alice@x.net", (1 << 64) - 1)
    assert not store.advance_counter("sip:alice@x.net", (1 << 64) - 1)
    with pytest.raises(InvalidRequest):
        store.advance_counter("sip:carol@x.net", 1 << 64)
    with pytest.raises(InvalidRequest):
        store.advance_counter("sip:carol@x.net", -1)


def test_concurrent_counters_from_two_nodes_admit_each_value_at_most_once(
    backend: Backend,
) -> None:
    nodes = [backend.open(), backend.open()]
    threads, values = 8, 60
    start = threading.Barrier(threads)
    admitted: list[list[int]] = [[] for _ in range(threads)]

    def run(n: int) -> None:
        store = nodes[n % 2]
        start.wait(timeout=30)
        for v in range(1, values + 1):
            if store.advance_counter("sip:alice@x.net", v):
                admitted[n].append(v)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(threads)))
    everything = [v for a in admitted for v in a]
    assert len(everything) == len(set(everything))  # no value admitted twice
    assert values in everything  # the highest value always wins once
    assert not nodes[0].advance_counter("sip:alice@x.net", values)


# --- resolutions ------------------------------------------------------------------------------


def test_a_resolution_added_on_one_node_is_seen_by_another_at_once(backend: Backend) -> None:
    one, two = backend.open(), backend.open()
    assert two.resolutions(b"t" * 16) == []  # a node that looked before still sees the new row
    r = _resolution(b"t" * 16)
    one.add_resolution(r)
    assert two.resolutions(b"t" * 16) == [r]
    assert two.resolutions(b"u" * 16) == []


def test_resolutions_of_a_ticket_come_in_resolution_order(store: ClosableStore) -> None:
    later, earlier = _resolution(b"t", "sip:b@x.net", 2.0), _resolution(b"t", "sip:c@x.net", 1.0)
    store.add_resolution(later)
    store.add_resolution(earlier)
    store.add_resolution(_resolution(b"other"))
    assert store.resolutions(b"t") == [earlier, later]


def test_concurrent_resolutions_are_all_kept(backend: Backend) -> None:
    nodes = [backend.open(), backend.open()]
    rows = [_resolution(b"t", f"sip:u{i}@x.net", float(i)) for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: nodes[i % 2].add_resolution(rows[i]), range(len(rows))))
    assert nodes[0].resolutions(b"t") == rows


# --- warrants and key records -----------------------------------------------------------------


def test_resolutions_warrants_and_key_records_survive_a_new_store_instance(
    backend: Backend,
) -> None:
    store = backend.open()
    r = _resolution(b"t" * 16)
    store.add_resolution(r)
    w = Warrant("LI-1", "sip:bob@x.net", 0.0, 2000.0, ("df2.li.example.net",))
    store.put_warrant(w)
    k = KeyRecord(KeyName.TICKET_PROTECTION, 1, 5.0, None, None)
    store.record_key(k)
    store.close()
    again = backend.open()
    assert again.resolutions(b"t" * 16) == [r]
    assert again.warrants_for("sip:bob@x.net") == [w]
    assert again.list_warrants() == [w]
    assert again.key_records(KeyName.TICKET_PROTECTION) == [k]
    assert again.key_records(KeyName.AUDIT) == []
    assert again.delete_warrant("LI-1") and not again.delete_warrant("LI-1")
    assert again.list_warrants() == []


def test_an_x1_task_keeps_its_xid_dids_and_delivery_type_in_a_new_store_instance(
    backend: Backend,
) -> None:
    store = backend.open()
    task = Warrant(
        "LI-X1",
        "sip:bob@x.net",
        0.0,
        9.0,
        ("dns:df2.li.example.net",),
        xid="29f28e1c-f230-486a-a860-f5a784ab9172",
        dids=("19867c20-8c94-473e-b9cd-8b72b7b05fd4",),
        delivery_type="X2andX3",
    )
    store.put_warrant(task)
    store.put_warrant(Warrant("LI-ADMIN", "sip:bob@x.net", 0.0, 9.0, ("a",)))
    store.close()
    again = backend.open()
    assert again.list_warrants()[1] == task
    assert again.list_warrants()[0].xid == "" and again.list_warrants()[0].dids == ()


def test_refuses_a_second_warrant_holding_the_same_xid_and_keeps_the_first(
    store: ClosableStore,
) -> None:
    first = Warrant("LI-1", "sip:bob@x.net", 0.0, 1.0, ("a",), xid="x-1")
    store.put_warrant(first)
    with pytest.raises(StoreConflict):
        store.put_warrant(Warrant("LI-2", "sip:carol@x.net", 0.0, 1.0, ("a",), xid="x-1"))
    assert store.list_warrants() == [first]
    replaced = Warrant("LI-1", "sip:carol@x.net", 0.0, 2.0, ("b",), xid="x-1")
    store.put_warrant(replaced)  # the same task again: replaced in place
    store.put_warrant(Warrant("LI-3", "sip:bob@x.net", 0.0, 1.0, ("a",)))
    store.put_warrant(Warrant("LI-4", "sip:bob@x.net", 0.0, 1.0, ("a",)))  # no XID: no rule
    assert [w.liid for w in store.list_warrants()] == ["LI-1", "LI-3", "LI-4"]
    assert store.list_warrants()[0] == replaced


def test_x1_destinations_are_stored_replaced_and_deleted(backend: Backend) -> None:
    store = backend.open()
    d = Destination("19867c20-8c94-473e-b9cd-8b72b7b05fd4", "DF2 one", "X2Only", "dns:df2.x")
    store.put_destination(d)
    store.put_destination(Destination("0a", "", "X2andX3", "uri:urn:df2"))
    changed = Destination(d.did, "DF2 one (moved)", "X2andX3", "dns:df2.y")
    store.put_destination(changed)
    store.close()
    again = backend.open()
    assert again.list_destinations() == [Destination("0a", "", "X2andX3", "uri:urn:df2"), changed]
    assert again.delete_destination("0a") and not again.delete_destination("0a")
    assert again.list_destinations() == [changed]
    with pytest.raises(InvalidRequest):
        again.put_destination(Destination("0b", "nul\x00", "X2Only", "dns:df2.x"))


def test_replacing_a_warrant_or_key_record_keeps_one_row(store: ClosableStore) -> None:
    store.put_warrant(Warrant("LI-1", "sip:bob@x.net", 0.0, 1.0, ("a",)))
    w = Warrant("LI-1", "sip:carol@x.net", 5.0, 6.0, ("b", "c"))
    store.put_warrant(w)
    store.put_warrant(Warrant("LI-0", "sip:bob@x.net", 0.0, 1.0, ("a",)))
    assert [x.liid for x in store.list_warrants()] == ["LI-0", "LI-1"]
    assert store.warrants_for("sip:carol@x.net") == [w]
    assert [x.liid for x in store.warrants_for("sip:bob@x.net")] == ["LI-0"]
    store.record_key(KeyRecord(KeyName.KEY_ENCRYPTION, 2, 1.0, None, None))
    store.record_key(KeyRecord(KeyName.KEY_ENCRYPTION, 1, 0.5, 1.0, None))
    retired = KeyRecord(KeyName.KEY_ENCRYPTION, 2, 1.0, 3.0, 4.0)
    store.record_key(retired)
    assert [r.version for r in store.key_records(KeyName.KEY_ENCRYPTION)] == [1, 2]
    assert store.key_records(KeyName.KEY_ENCRYPTION)[1] == retired


# --- audit head -------------------------------------------------------------------------------


def test_audit_head_only_moves_forward(backend: Backend) -> None:
    store = backend.open()
    assert store.audit_head() is None
    store.set_audit_head(3, b"m3")
    store.set_audit_head(3, b"m3")  # the same head again (a re-signed head file) is fine
    store.set_audit_head(5, b"m5")
    with pytest.raises(AuditHeadRegression, match="back"):
        store.set_audit_head(4, b"m4")
    with pytest.raises(AuditHeadRegression, match="another MAC"):
        store.set_audit_head(5, b"forged")
    with pytest.raises(AuditHeadRegression):
        backend.open().set_audit_head(0, b"")
    assert store.audit_head() == (5, b"m5")
    store.set_audit_head(6, b"m6")
    assert backend.open().audit_head() == (6, b"m6")
