"""Load generator shared by the gRPC benchmarks: one grpc.aio client process, N calls in
flight, a fixed duration, per-RPC latencies, and the client's own CPU time (it shares the 2 cores
with the server, so every report says how much of the machine the client took)."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

Unit = Callable[[Callable[[bytes], Awaitable[bytes]]], Awaitable[int]]


@dataclass
class Result:
    units: int
    rpcs: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    client_cpu: float  # seconds of client CPU over the run

    @property
    def rpc_rate(self) -> float:
        return self.rpcs / self.seconds

    @property
    def unit_rate(self) -> float:
        return self.units / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q / 100 * len(data)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")


async def _run(
    target: str,
    ca: bytes,
    unit: Unit,
    in_flight: int,
    seconds: float,
    warmup: float,
    path: str = "/kms.v1.TicketService/Exchange",
    client_cert: tuple[bytes, bytes] | None = None,
    raw: bool = False,
) -> Result:
    key, cert = client_cert if client_cert else (None, None)
    channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca, key, cert))
    method = channel.unary_unary(
        path,
        request_serializer=(lambda b: b) if raw else _frame,
        response_deserializer=(lambda b: b) if raw else _unframe,
    )
    latencies: list[float] = []
    counts = {"units": 0, "rpcs": 0, "errors": 0}
    measuring = {"on": False}

    async def call(data: bytes) -> bytes:
        start = time.perf_counter()
        answer: bytes = await method(data, timeout=30)
        if measuring["on"]:
            latencies.append((time.perf_counter() - start) * 1000)
            counts["rpcs"] += 1
        return answer

    stop_at = time.monotonic() + warmup + seconds

    async def worker() -> None:
        while time.monotonic() < stop_at:
            try:
                await unit(call)
                if measuring["on"]:
                    counts["units"] += 1
            except grpc.aio.AioRpcError:
                counts["errors"] += 1

    tasks = [asyncio.create_task(worker()) for _ in range(in_flight)]
    await asyncio.sleep(warmup)
    measuring["on"] = True
    cpu0, t0 = os.times(), time.monotonic()
    await asyncio.gather(*tasks)
    cpu1, t1 = os.times(), time.monotonic()
    await channel.close()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return Result(counts["units"], counts["rpcs"], counts["errors"], t1 - t0, latencies, cpu)


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
    target: str, ca: bytes, unit: Unit, in_flight: int = 64, seconds: float = 8.0,
    warmup: float = 1.5,
) -> Result:  # fmt: skip
    return asyncio.run(_run(target, ca, unit, in_flight, seconds, warmup))


def run_raw(
    target: str,
    ca: bytes,
    unit: Unit,
    path: str,
    client_cert: tuple[bytes, bytes] | None = None,
    in_flight: int = 64,
    seconds: float = 8.0,
    warmup: float = 1.5,
) -> Result:
    """As `run`, for any unary method: `unit` gets a caller taking serialized request bytes."""
    return asyncio.run(
        _run(target, ca, unit, in_flight, seconds, warmup, path, client_cert, raw=True)
    )
