"""Load generator shared by the gRPC benchmarks: one grpc.aio client process, N calls in flight
spread over C connections, a fixed duration, per-RPC latencies, the client's own CPU time and the
server's CPU time over exactly the measured window.

Rules:
- Each connection is its own HTTP/2 connection (a local subchannel pool and a distinct channel
  argument, otherwise gRPC shares one subchannel between channels to the same target).
- The server's CPU is utime + stime of every process of the server's tree (`tree_cpu`: the node,
  its worker processes, and any extra root given such as a PostgreSQL server), sampled right
  before and after the measured window, so what the benchmark reports is what a user of the
  node pays per RPC. Its context switches (`tree_switches`, every thread's) are read the same
  way: they are where CPU goes that no Python profile shows.
- The client shares the 2 cores with the server, so every report also says what the client took.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

Call = Callable[[bytes], Awaitable[bytes]]
Unit = Callable[[Call], Awaitable[int]]
TICKET_PATH = "/kms.v1.TicketService/Exchange"


def _tree(roots: Iterable[int]) -> dict[int, list[str]]:
    """The processes `roots` and all their descendants alive now, each with its /proc/PID/stat
    fields after the command name."""
    parent: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        stats[int(entry)] = fields
    wanted = set(roots)
    found = {}
    for pid, fields in stats.items():
        p = pid
        while p > 1:
            if p in wanted:
                found[pid] = fields
                break
            p = parent.get(p, 0)
    return found


def tree_cpu(roots: Iterable[int]) -> float:
    """CPU seconds (utime + stime) of the processes `roots` and all their descendants alive now."""
    ticks = sum(int(f[11]) + int(f[12]) for f in _tree(roots).values())
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_switches(roots: Iterable[int]) -> int:
    """Context switches (voluntary and not) of every thread of that tree so far: a thread that
    blocks on a lock, a condition or the GIL, or hands it over, costs two of them, and on these
    machines each costs more than a short PKCS#11 or SQLite call (see README, "Choices")."""
    total = 0
    for pid in _tree(roots):
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                status = Path(f"/proc/{pid}/task/{task}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


@dataclass
class Result:
    units: int
    rpcs: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    client_cpu: float  # seconds of client CPU over the run
    server_cpu: float = 0.0  # seconds of the server tree's CPU over the run (side included)
    side_cpu: float = 0.0  # of which the side processes' (a PostgreSQL server)
    server_switches: int = 0  # context switches of the server tree's threads over the run

    @property
    def rpc_rate(self) -> float:
        return self.rpcs / self.seconds

    @property
    def unit_rate(self) -> float:
        return self.units / self.seconds

    @property
    def server_us(self) -> float:
        return self.server_cpu / max(self.rpcs, 1) * 1e6

    @property
    def switches_per_rpc(self) -> float:
        return self.server_switches / max(self.rpcs, 1)

    @property
    def side_us(self) -> float:
        return self.side_cpu / max(self.rpcs, 1) * 1e6

    @property
    def client_us(self) -> float:
        return self.client_cpu / max(self.rpcs, 1) * 1e6

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q / 100 * len(data)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")


@dataclass(frozen=True)
class Target:
    """Where to send and whose CPU to count."""

    address: str
    ca: bytes
    server_pids: tuple[int, ...]
    path: str = TICKET_PATH
    client_cert: tuple[bytes, bytes] | None = None  # (key, cert) for mutual TLS
    raw: bool = False  # the unit's calls take and give serialized messages, not MIKEY bytes
    side_pids: tuple[int, ...] = ()  # also counted as server CPU, and reported on their own


async def _run(
    target: Target, unit: Unit, in_flight: int, connections: int, seconds: float, warmup: float
) -> Result:
    key, cert = target.client_cert if target.client_cert else (None, None)
    creds = grpc.ssl_channel_credentials(target.ca, key, cert)
    channels = [
        grpc.aio.secure_channel(
            target.address,
            creds,
            options=[("grpc.use_local_subchannel_pool", 1), ("bench.connection", i)],
        )
        for i in range(connections)
    ]
    methods = [
        channel.unary_unary(
            target.path,
            request_serializer=(lambda b: b) if target.raw else _frame,
            response_deserializer=(lambda b: b) if target.raw else _unframe,
        )
        for channel in channels
    ]
    latencies: list[float] = []
    counts = {"units": 0, "rpcs": 0, "errors": 0}
    measuring = {"on": False}

    def caller(method: Callable[..., Awaitable[bytes]]) -> Call:
        async def call(data: bytes) -> bytes:
            start = time.perf_counter()
            answer: bytes = await method(data, timeout=30)
            if measuring["on"]:
                latencies.append((time.perf_counter() - start) * 1000)
                counts["rpcs"] += 1
            return answer

        return call

    stop_at = time.monotonic() + warmup + seconds

    async def worker(call: Call) -> None:
        while time.monotonic() < stop_at:
            try:
                await unit(call)
                if measuring["on"]:
                    counts["units"] += 1
            except grpc.aio.AioRpcError:
                counts["errors"] += 1

    for channel in channels:
        await channel.channel_ready()
    tasks = [
        asyncio.create_task(worker(caller(methods[i % connections]))) for i in range(in_flight)
    ]
    await asyncio.sleep(warmup)
    measuring["on"] = True
    side0 = tree_cpu(target.side_pids)
    sw0 = tree_switches(target.server_pids)
    srv0, cpu0, t0 = tree_cpu(target.server_pids), os.times(), time.monotonic()
    await asyncio.gather(*tasks)
    srv1, cpu1, t1 = tree_cpu(target.server_pids), os.times(), time.monotonic()
    sw1 = tree_switches(target.server_pids)
    side = tree_cpu(target.side_pids) - side0
    for channel in channels:
        await channel.close()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return Result(
        counts["units"], counts["rpcs"], counts["errors"], t1 - t0, latencies, cpu,
        srv1 - srv0 + side, side, sw1 - sw0,
    )  # fmt: skip


def _frame(data: bytes) -> bytes:
    # MikeyMessage{bytes data = 1}: field 1, wire type 2, varint length
    n, out = len(data), bytearray(b"\x0a")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + data


def _unframe(raw: bytes) -> bytes:
    if not raw:
        return b""
    pos, n, shift = 1, 0, 0
    while True:
        b = raw[pos]
        n |= (b & 0x7F) << shift
        pos += 1
        shift += 7
        if not b & 0x80:
            break
    return raw[pos : pos + n]


def run(
    target: Target,
    unit: Unit,
    in_flight: int = 64,
    connections: int = 8,
    seconds: float = 8.0,
    warmup: float = 1.5,
) -> Result:
    """Drive `unit` (one call pair, one GetKeys, ...) from `in_flight` tasks over `connections`
    connections for `seconds` after `warmup`."""
    connections = max(1, min(connections, in_flight))
    return asyncio.run(_run(target, unit, in_flight, connections, seconds, warmup))
