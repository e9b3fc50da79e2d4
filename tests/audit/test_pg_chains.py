"""Audit chains in PostgreSQL (firmware/audit/pgmedium.py), one per node, keyed by the SoftHSM
audit key, on the suite's own PostgreSQL server: group commit from many threads; PostgreSQL
stopped mid-burst and back; a connection lost with or without its answer; two writers of one
chain; the start rules per chain (a chain cut, deleted or given a forged head while its node was
stopped refuses that node only, until accept-gap); verify across chains naming the chain and the
first bad record of a tampered one; SIGKILL of a writing process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from firmware.audit.chain import head_bytes
from firmware.audit.log import AuditLog
from firmware.audit.pgmedium import PostgresMedium, lock_key, verify_database
from firmware.audit.recovery import accept
from firmware.core.errors import (
    AuditHeadRegression,
    AuditIntegrityError,
    AuditUnavailable,
    ConfigError,
    StoreUnavailable,
)
from hsm.softhsm import SoftHsmToken
from hsm.vault import Pkcs11Vault
from tests.audit.conftest import ChainDb, Conn
from tests.audit.fakes import other_mac
from tests.pg import PgServer

pytestmark = pytest.mark.softhsm

DEADLINE = 60.0
REASON = "rows deleted by a DBA on 3 May; restored from backup, see ticket 4711"
Mac = Callable[[bytes], bytes]


def _write(db: ChainDb, chain: str, mac: Mac, n: int) -> None:
    """NODE_STARTED + n records on `chain`, its writer closed (the node stopped)."""
    log = db.log(chain, mac)
    for i in range(n):
        log.append(1000.0 + i, "KEY_RELEASE", {"chain": chain, "i": i})
    log.close()


def _refused(db: ChainDb, chain: str, mac: Mac) -> str:
    with pytest.raises(AuditIntegrityError) as info:
        db.log(chain, mac)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.endswith(f"accept-gap --config FILE --chain {chain}` after investigating")
    assert f"the audit chain {chain}" in message
    return message


def _starts(db: ChainDb, chain: str, mac: Mac) -> None:
    log = db.log(chain, mac)
    log.close()


def _events(db: ChainDb, chain: str) -> list[str]:
    return [json.loads(record)["event"] for _, record in db.rows(chain)]


# --- group commit -------------------------------------------------------------------------------


THREADS, EACH = 8, 25


def test_appends_from_many_threads_are_committed_in_shared_transactions_each_once_in_order(
    chain_db: ChainDb, vault: Pkcs11Vault
) -> None:
    batches: list[int] = []
    gate, waiting = threading.Event(), threading.Semaphore(0)

    def mac(data: bytes) -> bytes:
        # The writer holds its first batch until every thread is about to append: the others
        # queue meanwhile, and must be committed together.
        if threading.current_thread().name == "audit-writer" and batches:
            assert gate.wait(DEADLINE)
        return vault.audit_hmac(data)

    log = chain_db.log("n1", mac, counted=batches.append)

    def work(t: int) -> list[int]:
        waiting.release()
        return [log.append(float(i), "E", {"thread": t, "i": i}) for i in range(EACH)]

    with ThreadPoolExecutor(THREADS) as pool:
        running = [pool.submit(work, t) for t in range(THREADS)]
        for _ in range(THREADS):
            assert waiting.acquire(timeout=DEADLINE)
        gate.set()
        seqs = sorted(s for f in running for s in f.result(timeout=DEADLINE))
    log.close()
    records = 1 + THREADS * EACH
    assert seqs == list(range(2, records + 1))  # every append got its own seq
    assert sum(batches) == records
    assert len(batches) < records - THREADS  # transactions shared by many records
    rows = chain_db.rows("n1")
    assert [seq for seq, _ in rows] == list(range(1, records + 1))
    assert all(json.loads(record)["seq"] == seq for seq, record in rows)
    report = verify_database(chain_db.store.connection, vault.audit_hmac)
    assert (report.intact, report.records, [c.chain for c in report.chains]) == (
        True,
        records,
        ["n1"],
    )


# --- PostgreSQL outages ----------------------------------------------------------------------


class Heard:
    def __init__(self) -> None:
        self.calls: list[tuple[bool, str]] = []

    def __call__(self, available: bool, reason: str) -> None:
        self.calls.append((available, reason))


def _correlations(db: ChainDb, chain: str) -> dict[int, str]:
    return {
        seq: json.loads(record)["fields"].get("correlation_id", "")
        for seq, record in db.rows(chain)
    }


def test_postgresql_stopped_mid_burst_acknowledges_only_what_the_table_holds_and_serves_again(
    pg_server: PgServer, chain_db: ChainDb, vault: Pkcs11Vault
) -> None:
    heard = Heard()
    log = chain_db.log("n1", vault.audit_hmac, on_availability=heard)
    acknowledged: dict[int, str] = {}
    lock = threading.Lock()
    enough = threading.Event()

    def burst(t: int) -> str:
        """Appends until one is refused; returns the refusal."""
        for i in range(10**6):
            correlation = f"burst-{t}-{i}"
            try:
                seq = log.append(float(i), "KEY_RELEASE", {"correlation_id": correlation})
            except AuditUnavailable as exc:
                return str(exc)
            with lock:
                acknowledged[seq] = correlation
                if len(acknowledged) >= 100:
                    enough.set()
        raise AssertionError("unreachable")

    try:
        with ThreadPoolExecutor(6) as pool:
            running = [pool.submit(burst, t) for t in range(6)]
            assert enough.wait(DEADLINE), "the burst did not get going"
            pg_server.stop()
            refusals = [f.result(timeout=DEADLINE) for f in running]
        assert all("STORE_UNAVAILABLE" in r for r in refusals), refusals
        assert [a for a, _ in heard.calls] == [False]
        assert "STORE_UNAVAILABLE" in heard.calls[0][1] and "127.0.0.1" not in heard.calls[0][1]
        with pytest.raises(AuditUnavailable):  # still down: refused, nothing waits forever
            log.append(1.0, "KEY_RELEASE", {"correlation_id": "while-down"})
    finally:
        pg_server.start()
    seq = log.append(2.0, "KEY_RELEASE", {"correlation_id": "after"})  # the same object
    acknowledged[seq] = "after"
    assert heard.calls[1:] == [(True, "")]
    log.close()
    held = _correlations(chain_db, "n1")
    assert {s: held.get(s) for s in acknowledged} == acknowledged
    assert "while-down" not in held.values()
    assert verify_database(chain_db.connect, vault.audit_hmac).intact
    _starts(chain_db, "n1", vault.audit_hmac)


def _backend(db: ChainDb, chain: str) -> int:
    """The server pid of the session holding the chain's writer lock."""
    key = lock_key(chain) & 0xFFFF_FFFF_FFFF_FFFF
    rows = db.sql(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND classid::bigint = %s AND objid::bigint = %s",
        (key >> 32, key & 0xFFFF_FFFF),
    )
    assert len(rows) == 1, rows
    return int(rows[0][0])


def test_a_connection_lost_while_idle_costs_no_refusal(
    chain_db: ChainDb, vault: Pkcs11Vault
) -> None:
    heard = Heard()
    log = chain_db.log("n1", vault.audit_hmac, on_availability=heard)
    old = _backend(chain_db, "n1")
    chain_db.sql("SELECT pg_terminate_backend(%s)", (old,))
    assert log.append(1.0, "A", {}) == 2  # sent once more on a new connection
    assert _backend(chain_db, "n1") != old  # which holds the writer lock again
    log.close()
    assert heard.calls == []
    assert _events(chain_db, "n1") == ["NODE_STARTED", "A"]


class _LosingConnection:
    """A connection whose next commit statement is executed by the server and then loses its
    connection before the answer arrives (as a network cut after COMMIT does)."""

    armed = False

    def __init__(self, real: Conn) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "real":
            object.__setattr__(self, name, value)
        else:
            setattr(self.real, name, value)

    def execute(self, query: Any, params: Any = None) -> Any:
        cursor = self.real.execute(query, params)
        if _LosingConnection.armed and "audit_records" in str(query) and "WITH kept" in query:
            _LosingConnection.armed = False
            self.real.close()
            raise psycopg.OperationalError("the connection was lost")
        return cursor


def test_a_batch_committed_though_its_answer_was_lost_is_acknowledged_not_written_twice(
    chain_db: ChainDb, vault: Pkcs11Vault
) -> None:
    log = AuditLog(
        PostgresMedium(lambda: _LosingConnection(chain_db.connect()), "n1"),  # type: ignore[arg-type,return-value]
        vault.audit_hmac,
    )
    _LosingConnection.armed = True
    assert log.append(1.0, "A", {"id": "answer-lost"}) == 2
    assert not _LosingConnection.armed
    assert log.append(2.0, "B", {}) == 3
    log.close()
    assert _events(chain_db, "n1") == ["NODE_STARTED", "A", "B"]
    assert verify_database(chain_db.connect, vault.audit_hmac).intact


def test_a_chain_that_moved_on_while_its_connection_was_lost_is_refused_from_then_on(
    chain_db: ChainDb, vault: Pkcs11Vault
) -> None:
    log = chain_db.log("n1", vault.audit_hmac)
    chain_db.sql("SELECT pg_terminate_backend(%s)", (_backend(chain_db, "n1"),))
    _starts(chain_db, "n1", vault.audit_hmac)  # the lock was free: another writer wrote on
    for _ in range(2):
        with pytest.raises(AuditUnavailable, match="moved on without this writer"):
            log.append(1.0, "A", {})
    log.close()
    assert _events(chain_db, "n1") == ["NODE_STARTED", "NODE_STARTED"]


def test_a_store_head_moved_ahead_refuses_the_commit_and_writes_none_of_it(
    chain_db: ChainDb, vault: Pkcs11Vault
) -> None:
    log = chain_db.log("n1", vault.audit_hmac)
    before = chain_db.sql("SELECT head FROM audit_signed_heads WHERE chain = 'n1'")
    chain_db.sql("UPDATE audit_heads SET count = 50 WHERE chain = 'n1'")
    with pytest.raises(AuditUnavailable, match="already counts"):
        log.append(1.0, "A", {})
    log.close()
    assert _events(chain_db, "n1") == ["NODE_STARTED"]
    assert chain_db.sql("SELECT head FROM audit_signed_heads WHERE chain = 'n1'") == before
    assert chain_db.sql("SELECT count FROM audit_heads WHERE chain = 'n1'") == [(50,)]


def test_a_server_that_does_not_commit_synchronously_is_made_to_for_the_writer(
    chain_db: ChainDb, vault: Pkcs11Vault
) -> None:
    chain_db.sql(f'ALTER DATABASE "{chain_db.name}" SET synchronous_commit = off')
    opened: list[Conn] = []

    def connect() -> Conn:
        opened.append(chain_db.connect())
        return opened[-1]

    log = AuditLog(PostgresMedium(connect, "n1"), vault.audit_hmac)
    try:
        assert chain_db.sql("SHOW synchronous_commit") == [("off",)]
        row = opened[0].execute("SHOW synchronous_commit").fetchone()
        assert row == ("on",)
    finally:
        log.close()


def test_postgresql_unreachable_at_start_is_store_unavailable(vault: Pkcs11Vault) -> None:
    from tests.pg import _free_port

    url = f"postgresql://postgres@127.0.0.1:{_free_port()}/kms"
    with pytest.raises(StoreUnavailable):
        AuditLog(PostgresMedium(lambda: psycopg.connect(url, connect_timeout=2), "n1"), other_mac)


@pytest.mark.parametrize("chain", ["", "a b", "x" * 65, "n1;DROP", "é"])
def test_a_chain_id_that_could_not_be_named_safely_is_refused(chain: str) -> None:
    with pytest.raises(ConfigError):
        PostgresMedium(lambda: None, chain)  # type: ignore[arg-type,return-value]


# --- one writer per chain -----------------------------------------------------------------------


def test_a_second_writer_of_a_chain_is_refused_while_the_first_lives(
    chain_db: ChainDb, vault: Pkcs11Vault
) -> None:
    mac = vault.audit_hmac
    first = chain_db.log("n1", mac)
    try:
        with pytest.raises(AuditUnavailable, match="the audit chain n1 is in use"):
            chain_db.log("n1", mac)
        with pytest.raises(AuditUnavailable, match="in use"):
            accept(chain_db.medium("n1"), mac, REASON, time.time())
        _starts(chain_db, "n2", mac)  # another chain is another lock
        assert first.append(1.0, "A", {}) == 2  # the refused writers changed nothing
    finally:
        first.close()
    _starts(chain_db, "n1", mac)  # the lock went with the first writer
    assert _events(chain_db, "n1") == ["NODE_STARTED", "A", "NODE_STARTED"]


# --- the start rules, per chain -----------------------------------------------------------------


def _three(db: ChainDb, mac: Mac) -> None:
    for chain in ("a", "b", "c"):
        _write(db, chain, mac, 6)  # 7 records each


def _cut(db: ChainDb, mac: Mac) -> None:
    db.sql("DELETE FROM audit_records WHERE chain = 'b' AND seq > 4")


def _cut_under_an_older_head(db: ChainDb, mac: Mac) -> None:
    old = db.sql("SELECT head FROM audit_signed_heads WHERE chain = 'b'")[0][0]
    _write(db, "b", mac, 2)  # records 8..10
    db.sql("DELETE FROM audit_records WHERE chain = 'b' AND seq > 7")
    db.sql("UPDATE audit_signed_heads SET head = %s WHERE chain = 'b'", (old,))


def _deleted(db: ChainDb, mac: Mac) -> None:
    db.sql("DELETE FROM audit_records WHERE chain = 'b'")


def _forged_head(db: ChainDb, mac: Mac) -> None:
    db.sql("DELETE FROM audit_records WHERE chain = 'b' AND seq > 4")
    forged = head_bytes(4, bytes(32), other_mac)
    db.sql("UPDATE audit_signed_heads SET head = %s WHERE chain = 'b'", (forged,))


def _moved_row(db: ChainDb, mac: Mac) -> None:
    """The last row under another seq: still in order, its content intact."""
    db.sql("UPDATE audit_records SET seq = 70 WHERE chain = 'b' AND seq = 7")


TAMPERING = {
    "cut": (_cut, "ends at record 4 but its signed head counts 7"),
    "cut under an older genuine head": (
        _cut_under_an_older_head,
        "the state store's head counts 10",
    ),
    "rows deleted": (_deleted, "is missing but its signed head counts 7"),
    "forged head": (_forged_head, "the signed head of the audit chain b does not verify"),
    "row moved": (_moved_row, "record 7 of 7 in the audit chain b does not verify"),
}


@pytest.mark.parametrize("kind", TAMPERING)
def test_a_chain_tampered_with_while_its_node_was_stopped_refuses_that_node_only_until_accepted(
    chain_db: ChainDb, vault: Pkcs11Vault, kind: str
) -> None:
    mac = vault.audit_hmac
    _three(chain_db, mac)
    tamper, says = TAMPERING[kind]
    tamper(chain_db, mac)
    assert says in _refused(chain_db, "b", mac)
    _refused(chain_db, "b", mac)  # a refused start changed nothing
    _starts(chain_db, "a", mac)
    _starts(chain_db, "c", mac)
    report = verify_database(chain_db.store.connection, mac)
    assert [(c.chain, c.intact) for c in report.chains] == [("a", True), ("b", False), ("c", True)]

    gap = accept(chain_db.medium("b"), mac, REASON, time.time())
    assert gap.reason == REASON
    log = chain_db.log("b", mac)
    assert log.start_findings.accepted_gaps == (gap,)
    log.close()
    report = verify_database(chain_db.store.connection, mac)
    assert report.intact, report.detail
    assert [c.gaps for c in report.chains] == [(), (gap,), ()]
    evidence = chain_db.sql(
        "SELECT seq FROM audit_rejected WHERE chain = 'b' AND gap = %s", (gap.record,)
    )
    if kind == "forged head":
        assert evidence == [(None,)]  # the forged head kept for the investigation
    if kind == "row moved":
        assert evidence == [(70,)]
    with pytest.raises(Exception, match="nothing to accept"):
        accept(chain_db.medium("b"), mac, REASON, time.time())


class _Raced(PostgresMedium):
    """accept-gap's medium, while someone raises the chain's store head between the read and
    the rewrite."""

    def __init__(self, db: ChainDb, chain: str) -> None:
        super().__init__(db.connect, chain)
        self.db = db

    def rewrite(self, keep: int, gap: Any, head_rejected: bool) -> None:
        self.db.sql("UPDATE audit_heads SET count = 1000 WHERE chain = %s", (self.chain,))
        super().rewrite(keep, gap, head_rejected)


def test_accept_gap_that_would_lower_the_store_head_changes_nothing(
    chain_db: ChainDb, vault: Pkcs11Vault
) -> None:
    mac = vault.audit_hmac
    _three(chain_db, mac)
    _forged_head(chain_db, mac)
    before = (
        chain_db.rows("b"),
        chain_db.sql("SELECT head FROM audit_signed_heads WHERE chain = 'b'"),
    )
    with pytest.raises(AuditHeadRegression, match="already counts"):
        accept(_Raced(chain_db, "b"), mac, REASON, time.time())
    after = (
        chain_db.rows("b"),
        chain_db.sql("SELECT head FROM audit_signed_heads WHERE chain = 'b'"),
    )
    assert after == before
    assert chain_db.sql("SELECT count(*) FROM audit_rejected") == [(0,)]


def test_accept_gap_on_a_chain_that_needs_none_changes_nothing(
    chain_db: ChainDb, vault: Pkcs11Vault
) -> None:
    _write(chain_db, "a", vault.audit_hmac, 2)
    before = chain_db.rows("a")
    with pytest.raises(Exception, match="nothing to accept: the audit chain a agrees"):
        accept(chain_db.medium("a"), vault.audit_hmac, REASON, time.time())
    assert chain_db.rows("a") == before


# --- verify across chains -----------------------------------------------------------------------


def _flip(db: ChainDb, seq: int, offset: int, bit: int) -> None:
    db.sql(
        "UPDATE audit_records SET record = set_byte(record, %s, get_byte(record, %s) # %s)"
        " WHERE chain = 'b' AND seq = %s",
        (offset, offset, 1 << bit, seq),
    )


def _delete_row(db: ChainDb, seq: int) -> None:
    db.sql("DELETE FROM audit_records WHERE chain = 'b' AND seq = %s", (seq,))


def _swap(db: ChainDb, seq: int) -> None:
    db.sql(
        "UPDATE audit_records r SET record = o.record FROM audit_records o"
        " WHERE r.chain = 'b' AND o.chain = 'b'"
        " AND ((r.seq = %s AND o.seq = %s) OR (r.seq = %s AND o.seq = %s))",
        (seq, seq + 1, seq + 1, seq),
    )


CASES = [
    ("flip", lambda db: _flip(db, 1, 0, 0), 1),
    ("flip", lambda db: _flip(db, 5, 40, 3), 5),
    ("flip", lambda db: _flip(db, 7, 120, 6), 7),
    ("delete", lambda db: _delete_row(db, 1), 1),
    ("delete", lambda db: _delete_row(db, 4), 4),
    ("delete", lambda db: _delete_row(db, 7), 7),
    ("swap", lambda db: _swap(db, 1), 1),
    ("swap", lambda db: _swap(db, 3), 3),
    ("swap", lambda db: _swap(db, 6), 6),
]


@pytest.mark.parametrize(
    ("kind", "tamper", "first_bad"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES]
)
def test_verify_across_three_chains_names_the_tampered_chain_and_its_first_bad_record(
    chain_db: ChainDb,
    vault: Pkcs11Vault,
    kind: str,
    tamper: Callable[[ChainDb], None],
    first_bad: int,
) -> None:
    mac = vault.audit_hmac
    _three(chain_db, mac)
    assert verify_database(chain_db.store.connection, mac).intact
    tamper(chain_db)
    report = verify_database(chain_db.store.connection, mac)
    assert [(c.chain, c.intact) for c in report.chains] == [("a", True), ("b", False), ("c", True)]
    assert (report.intact, report.bad_chain, report.first_bad) == (False, "b", first_bad)
    assert report.records == 21 - (kind == "delete")
    assert f"audit chain b: first bad record {first_bad} of " in report.detail
    assert '"chain"' not in report.detail  # no record content


LEFT_OF_B = {
    "rows only": ("audit_signed_heads", "audit_heads"),
    "signed head only": ("audit_records", "audit_heads"),
    "store head only": ("audit_records", "audit_signed_heads"),
}


@pytest.mark.parametrize("left", LEFT_OF_B)
def test_a_chain_is_verified_and_not_intact_whatever_part_of_it_is_left(
    chain_db: ChainDb, vault: Pkcs11Vault, left: str
) -> None:
    mac = vault.audit_hmac
    _three(chain_db, mac)
    for table in LEFT_OF_B[left]:
        chain_db.sql(f"DELETE FROM {table} WHERE chain = 'b'")  # noqa: S608 (test's own names)
    report = verify_database(chain_db.connect, mac)
    assert [(c.chain, c.intact) for c in report.chains] == [("a", True), ("b", False), ("c", True)]
    assert report.detail.startswith("audit chain b: first bad record")


def test_a_live_writer_finds_its_chain_gone_from_the_database(
    chain_db: ChainDb, vault: Pkcs11Vault
) -> None:
    log = chain_db.log("n1", vault.audit_hmac)
    try:
        log.append(1.0, "A", {})
        for table in ("audit_records", "audit_signed_heads", "audit_heads"):
            chain_db.sql(f"DELETE FROM {table}")  # noqa: S608 (test's own names)
        assert verify_database(chain_db.connect, vault.audit_hmac).chains == ()
        report = log.verify_all()
        assert (report.intact, report.bad_chain, report.first_bad) == (False, "n1", 1)
    finally:
        log.close()


def test_a_live_writer_finds_its_chain_cut_though_an_older_genuine_head_was_put_back(
    chain_db: ChainDb, vault: Pkcs11Vault
) -> None:
    mac = vault.audit_hmac
    log = chain_db.log("n1", mac)
    try:
        log.append(1.0, "A", {})
        old = chain_db.sql("SELECT h.head, k.count, k.mac FROM audit_signed_heads h, audit_heads k")
        log.append(2.0, "B", {})
        assert log.verify_all().intact
        chain_db.sql("DELETE FROM audit_records WHERE seq = 3")
        chain_db.sql("UPDATE audit_signed_heads SET head = %s", (old[0][0],))
        chain_db.sql("UPDATE audit_heads SET count = %s, mac = %s", old[0][1:])
        assert verify_database(chain_db.connect, mac).intact  # the database alone cannot tell
        report = log.verify_all()
        assert (report.intact, report.bad_chain, report.first_bad) == (False, "n1", 3)
    finally:
        log.close()


# --- SIGKILL ------------------------------------------------------------------------------------


KILL_AFTER = 200


def test_sigkill_of_a_process_writing_a_chain_loses_no_acknowledged_record(
    chain_db: ChainDb, vault: Pkcs11Vault, softhsm_token: SoftHsmToken
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.audit.pg_writer", chain_db.url, "n1", softhsm_token.uri,
         softhsm_token.module_path],
        stdout=subprocess.PIPE, text=True, env=softhsm_token.env(),
    )  # fmt: skip
    assert child.stdout is not None
    acknowledged: dict[int, str] = {}
    try:
        assert child.stdout.readline() == "ready\n"
        for line in child.stdout:
            seq, correlation = line.split()
            acknowledged[int(seq)] = correlation
            if len(acknowledged) >= KILL_AFTER:
                break
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=DEADLINE) == -signal.SIGKILL
        for line in child.stdout:  # what it acknowledged before it died
            seq, correlation = line.split()
            acknowledged[int(seq)] = correlation
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=DEADLINE)
        child.stdout.close()
    log = chain_db.log("n1", vault.audit_hmac)  # the lock died with it; the start rules hold
    assert log.start_findings.accepted_gaps == ()
    log.close()
    held = _correlations(chain_db, "n1")
    assert len(acknowledged) >= KILL_AFTER
    assert {s: held.get(s) for s in acknowledged} == acknowledged
    assert verify_database(chain_db.store.connection, vault.audit_hmac).intact
