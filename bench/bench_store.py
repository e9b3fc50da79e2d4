"""Store cost per hot call: SQLite against PostgreSQL on this machine.

Run from the repository root: `python -m bench.bench_store [--seconds S] [--rounds N]`.
It starts its own throw-away PostgreSQL (firmware/devpg.py, with the server's default settings:
fsync and synchronous_commit on, as in production) and a SQLite file on the same disk, and times
the calls the request path makes: user_by_psk_id, add_resolution from 8 threads at once,
resolutions(ticket_id), advance_counter, and the replay cache's admit (the in-memory
core.freshness.ReplayCache in the SQLite column, which is what a SQLite node uses, against
PostgresReplayCache). Each call runs for S seconds per round; the best round of each counts.

Columns: wall µs per call (for add_resolution: wall time / calls, with 8 threads: the inverse of
throughput), this process's CPU µs per call (all its threads), and for PostgreSQL the server's
CPU µs per call (every backend of the throw-away server), then the PostgreSQL/SQLite ratios.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.load import tree_cpu
from firmware.core.freshness import ReplayCache
from firmware.core.ports import Resolution, User, WrappedKey
from firmware.devpg import PgServer
from firmware.store.postgres import PostgresStore
from firmware.store.replay import PostgresReplayCache
from firmware.store.sqlite import SqliteStore

THREADS = 8
USERS = 1000


@dataclass
class Cost:
    wall_us: float
    cpu_us: float
    server_us: float


def _server_cpu(server: PgServer) -> float:
    """CPU seconds of the postmaster and every backend (bench/load.py tree_cpu)."""
    return tree_cpu([int((server.data / "postmaster.pid").read_text().split()[0])])


def measure(
    fn: Callable[[int], object], seconds: float, threads: int, server: PgServer | None
) -> Cost:
    """Run fn(i) for `seconds` in `threads` threads; cost per call."""
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = threading.Event()
    serial = itertools.count()

    def run(t: int) -> None:
        start.wait()
        n = 0
        while not stop.is_set():
            for _ in range(20):
                fn(next(serial))
            n += 20
        counts[t] = n

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    server0 = _server_cpu(server) if server else 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    start.wait()
    stop.wait(seconds)
    stop.set()
    for w in workers:
        w.join()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    served = (_server_cpu(server) - server0) if server else 0.0
    calls = sum(counts)
    return Cost(wall / calls * 1e6, cpu / calls * 1e6, served / calls * 1e6)


def best(costs: list[Cost]) -> Cost:
    return min(costs, key=lambda c: c.wall_us)


def workloads(
    store: SqliteStore | PostgresStore, replay: object
) -> dict[str, tuple[int, Callable[[int], object]]]:
    base = time.time()
    counter = itertools.count(1)
    admit = replay.admit  # type: ignore[attr-defined]
    return {
        "user_by_psk_id": (1, lambda i: store.user_by_psk_id(b"psk-%d" % (i % USERS))),
        f"add_resolution x{THREADS} threads": (
            THREADS,
            lambda i: store.add_resolution(
                Resolution(b"ticket-%d" % i, "sip:bob@x.net", b"r" * 16, base, b"sip:bob@x.net")
            ),
        ),
        "resolutions(ticket_id)": (1, lambda i: store.resolutions(b"ticket-%d" % (i % 1000))),
        "advance_counter": (1, lambda i: store.advance_counter("sip:u1@x.net", next(counter))),
        "replay admit": (1, lambda i: admit(b"mac-%d" % i + os.urandom(8), base, base)),
    }


def populate(store: SqliteStore | PostgresStore) -> None:
    for n in range(USERS):
        store.put_user(
            User(f"sip:u{n}@x.net", (f"tel:+1555{n}",), b"psk-%d" % n, WrappedKey(1, b"k" * 40))
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    server = PgServer(options=())  # the server's defaults: fsync and synchronous_commit on
    try:
        with tempfile.TemporaryDirectory(prefix="kms-bench-", dir="/var/tmp") as tmp:
            lite = SqliteStore(Path(tmp) / "state.sqlite")
            pg = PostgresStore(server.url(server.database()), max_connections=THREADS + 2)
            for s in (lite, pg):
                populate(s)
            now = time.time()
            memory = ReplayCache(60, now - 1, capacity=10_000_000)
            shared = PostgresReplayCache(pg, 60, now - 1, capacity=10_000_000)
            sides = {
                "sqlite": workloads(lite, memory),
                "postgres": workloads(pg, shared),
            }
            results: dict[str, dict[str, Cost]] = {"sqlite": {}, "postgres": {}}
            for name in sides["sqlite"]:
                rounds: dict[str, list[Cost]] = {"sqlite": [], "postgres": []}
                for _ in range(args.rounds):  # alternate, so both see the same background load
                    for side in ("sqlite", "postgres"):
                        threads, fn = sides[side][name]
                        srv = server if side == "postgres" else None
                        rounds[side].append(measure(fn, args.seconds, threads, srv))
                for side in rounds:
                    results[side][name] = best(rounds[side])
            shared.close()
            lite.close()
            pg.close()
    finally:
        server.close()

    print(
        f"{'call':32} {'sqlite wall':>11} {'cpu':>7} | {'pg wall':>8} {'cpu':>7} {'server':>7}"
        f" | {'wall x':>6} {'cpu x':>6} {'cpu+srv x':>9}   (µs per call)"
    )
    for name, lc in results["sqlite"].items():
        pc = results["postgres"][name]
        print(
            f"{name:32} {lc.wall_us:11.1f} {lc.cpu_us:7.1f} | {pc.wall_us:8.1f} {pc.cpu_us:7.1f}"
            f" {pc.server_us:7.1f} | {pc.wall_us / lc.wall_us:6.2f} {pc.cpu_us / lc.cpu_us:6.2f}"
            f" {(pc.cpu_us + pc.server_us) / lc.cpu_us:9.2f}"
        )


if __name__ == "__main__":
    main()
