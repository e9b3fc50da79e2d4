"""Benchmark: ticket pairs (REQUEST_INIT + RESOLVE_INIT) over MIKEY-over-HTTPS against the same
pairs over gRPC TicketService, one `kmsnode serve`, the same client machine, one run.

    python -m bench.bench_http [--seconds 8] [--clients 1 8]

For each transport and client count: pairs/s, exchanges/s, the server's CPU per exchange (from
/proc) and the client's. HTTPS clients are http.client keep-alive connections, one per client
thread; gRPC clients share one channel, one thread each. Both run the same MIKEY work.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from bench.bench_kms import ALICE, BOB, KMS, POLICY, PSK_A, PSK_B, dev_node, t_now
from bench.load import tree_cpu
from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.mikey.codec import GenericIdEntry
from firmware.mikey.constants import DataType
from firmware.mikey.exchange import Initiator, Responder

Exchange = Callable[[bytes], bytes]


def pair(call: Exchange) -> None:
    alice = Initiator(ALICE, PSK_A, KMS)
    bob = Responder(BOB, PSK_B, KMS)
    rand = os.urandom(100)  # RANDs as long as the 32-byte PSKs (RFC 6043 12.1)
    csb = int.from_bytes(rand[:4], "big")
    alice.process_request_resp(
        call(alice.request_init(csb_id=csb, t=t_now(), rand_i=rand[4:36], policy=POLICY))
    )
    ti = alice.transfer_init(
        csb_id=csb, t=t_now(), rand_i=rand[36:52], sessions=[GenericIdEntry.srtp(1, csb)],
        responder=BOB,
    )  # fmt: skip
    bob.receive_transfer_init(ti)
    answer = call(bob.resolve_init(csb_id=csb ^ 1, t=t_now(), rand_r=rand[52:84]))
    if answer[1] != DataType.RESOLVE_RESP:
        raise RuntimeError("resolve refused")


def https_client(port: int, ca: Path) -> tuple[Exchange, Callable[[], None]]:
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)

    def call(data: bytes) -> bytes:
        conn.request("POST", "/mikey", body=data, headers={"Content-Type": "application/mikey"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        return body

    return call, conn.close


def grpc_client(channel: grpc.Channel) -> tuple[Exchange, Callable[[], None]]:
    stub = kms_pb2_grpc.TicketServiceStub(channel)

    def call(data: bytes) -> bytes:
        return bytes(stub.Exchange(kms_pb2.MikeyMessage(data=data), timeout=30).data)

    return call, lambda: None


def drive(
    make: Callable[[], tuple[Exchange, Callable[[], None]]], clients: int, seconds: float, pid: int
) -> tuple[int, float, float, float]:
    """(pairs, wall seconds, server CPU seconds, client CPU seconds)."""
    stop = threading.Event()
    counts = [0] * clients
    made = [make() for _ in range(clients)]
    for call, _ in made:  # warm the connection (TLS handshake) outside the measurement
        pair(call)

    def loop(i: int) -> None:
        call = made[i][0]
        while not stop.is_set():
            pair(call)
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    server0, client0, wall0 = tree_cpu([pid]), time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall0
    result = sum(counts), wall, tree_cpu([pid]) - server0, time.process_time() - client0
    for _, close in made:
        close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    dev = dev_node("kmsnode-bench-http-")
    pki = dev.pki
    node = subprocess.Popen(
        [sys.executable, "-m", "firmware.cli", "serve", "--config", str(dev.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dev.env,
    )
    assert node.stdout is not None
    ports: dict[str, int] = {}
    for _ in range(4):
        match = re.match(r"(.*) listener on .*:(\d+)", node.stdout.readline())
        if match:
            ports[match.group(1)] = int(match.group(2))
    if "UE HTTPS" not in ports:
        node.kill()
        raise SystemExit("the node did not start with its HTTPS listener")
    ca = pki / "ca.pem"
    channel = grpc.secure_channel(
        f"localhost:{ports['UE']}", grpc.ssl_channel_credentials(ca.read_bytes())
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores)")
    print(
        f"{'transport':<10} {'clients':>7} {'pairs/s':>8} {'exch/s':>8}"
        f" {'srv us/exch':>11} {'cli us/exch':>11}"
    )
    try:
        for clients in args.clients:
            runs = {
                "HTTPS": lambda: https_client(ports["UE HTTPS"], ca),
                "gRPC": lambda: grpc_client(channel),
            }
            for name, make in runs.items():
                pairs, wall, server, client = drive(make, clients, args.seconds, node.pid)
                exchanges = 2 * pairs
                print(
                    f"{name:<10} {clients:>7} {pairs / wall:>8.0f} {exchanges / wall:>8.0f}"
                    f" {server / max(exchanges, 1) * 1e6:>11.0f}"
                    f" {client / max(exchanges, 1) * 1e6:>11.0f}",
                    flush=True,
                )
    finally:
        channel.close()
        node.terminate()
        node.wait()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
