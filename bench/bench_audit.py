"""Audit log cost per record, group commit: the file medium against a PostgreSQL chain.

Run from the repository root: `python -m bench.bench_audit [--seconds S] [--rounds N]`.
It starts its own throw-away PostgreSQL (firmware/devpg.py, the server's default settings:
fsync and synchronous_commit on, as in production) and writes a log file in a temporary folder
on the same disk with its head counted in a SQLite state store beside it (as an embedded node
runs it; a PostgreSQL chain's heads are in its commit). For 1 and 8 appending threads, each
medium is appended to for S seconds per round (the best round counts). The MAC is HMAC-SHA-256
in software, so that the figures are the medium's: the HSM's MAC costs the same on both (one
per record and one per batch).

Columns: records per second, mean records per commit (the group commit), this process's CPU µs
per record (all its threads), and for PostgreSQL the server's CPU µs per record (every backend
of the throw-away server), then PostgreSQL/file ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.bench_store import measure
from firmware.audit.log import AuditLog
from firmware.audit.pgmedium import PostgresMedium
from firmware.devpg import PgServer
from firmware.store.postgres import PostgresStore
from firmware.store.sqlite import SqliteStore

KEY = b"bench-audit-key-" * 2
FIELDS = {
    "caller": "dns:df2.li.example.net,uri:urn:kmsnode:df2:df2.li.example.net",
    "target": "sip:bob@ims.example.net",
    "role": "RESPONDER",
    "liid": "LIID-0001",
    "correlation_id": "c-000000",
    "csb_id": 123456789,
}


def mac(data: bytes) -> bytes:
    return hmac.digest(KEY, data, hashlib.sha256)


@dataclass
class Result:
    per_second: float
    per_commit: float
    cpu_us: float
    server_us: float


def run(
    log: AuditLog, batches: list[int], seconds: float, threads: int, server: PgServer | None
) -> Result:
    """Appends from `threads` threads for `seconds` (bench_store.measure); cost per record."""
    batches.clear()
    cost = measure(
        lambda _: log.append(time.time(), "KEY_RELEASE", FIELDS), seconds, threads, server
    )
    records = seconds * 1e6 / cost.wall_us  # about: calls made in the window
    return Result(1e6 / cost.wall_us, records / max(1, len(batches)), cost.cpu_us, cost.server_us)


def best(results: list[Result]) -> Result:
    return max(results, key=lambda r: r.per_second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    server = PgServer(options=())
    try:
        url = server.url(server.database())
        PostgresStore(url).close()  # migrates the database
        results: dict[tuple[str, int], Result] = {}
        with tempfile.TemporaryDirectory() as folder:
            for threads in (1, 8):
                heads = SqliteStore(Path(folder) / f"state-{threads}.sqlite")

                def file_log(b: list[int], t: int = threads, h: SqliteStore = heads) -> AuditLog:
                    return AuditLog(Path(folder) / f"audit-{t}.log", mac, b.append, head_store=h)

                def pg_log(b: list[int], t: int = threads) -> AuditLog:
                    medium = PostgresMedium(
                        lambda: psycopg.connect(url, autocommit=True), f"bench-{t}"
                    )
                    return AuditLog(medium, mac, b.append)

                openers: dict[str, Callable[[list[int]], AuditLog]] = {
                    "file": file_log,
                    "postgres": pg_log,
                }
                for name, opener in openers.items():
                    batches: list[int] = []
                    log = opener(batches)
                    try:
                        pg = server if name == "postgres" else None
                        results[name, threads] = best(
                            [
                                run(log, batches, args.seconds, threads, pg)
                                for _ in range(args.rounds)
                            ]
                        )
                    finally:
                        log.close()
                heads.close()
    finally:
        server.close()

    print(
        f"{'threads':>7} {'medium':>8} {'records/s':>10} {'per commit':>10} {'cpu µs':>7}"
        f" {'server µs':>9}"
    )
    for (name, threads), c in results.items():
        print(
            f"{threads:7} {name:>8} {c.per_second:10.0f} {c.per_commit:10.1f} {c.cpu_us:7.1f}"
            f" {c.server_us:9.1f}"
        )
    for threads in (1, 8):
        f, p = results["file", threads], results["postgres", threads]
        print(
            f"{threads} thread(s): postgres/file records/s {p.per_second / f.per_second:.2f},"
            f" client cpu {p.cpu_us / f.cpu_us:.2f}, client+server cpu"
            f" {(p.cpu_us + p.server_us) / f.cpu_us:.2f}"
        )


if __name__ == "__main__":
    main()
