"""Benchmark: how fast alarms reach a watcher while GetKeys runs at 64 in flight through the real
mutual-TLS LI listener (GetKeys' own cost against the echo server is in bench_kms).

    python -m bench.bench_xk [--seconds 8] [--calls 200]

Goal (issue 5): alarms delivered to a watcher within 100 ms at that load. One GetKeys in 50 is a
forged request (bob's call named as alice's) that must be refused with an alarm; the watcher
measures from the alarm's time stamp (set by the node when it raised the alarm) to its arrival.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import grpc

from bench.bench_kms import (
    GETKEYS_PATH,
    HEADER,
    add_warrants,
    dev_node,
    exchange_through,
    full_calls,
    getkeys_requests,
    getkeys_unit,
    row,
    serving,
)
from bench.load import Target, run
from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    node = dev_node("kmsnode-bench-xk-")
    pki = node.pki
    ca = (pki / "ca.pem").read_bytes()
    with serving(node) as (proc, ue, li):
        add_warrants(node)
        exchange, close = exchange_through(ue, ca)
        requests = getkeys_requests(full_calls(exchange, args.calls), forged_every=50)
        close()
        creds = grpc.ssl_channel_credentials(
            ca, (pki / "admin.key").read_bytes(), (pki / "admin.pem").read_bytes()
        )
        latencies: list[float] = []
        watch_channel = grpc.secure_channel(f"localhost:{li}", creds)
        stream = kms_pb2_grpc.AdminServiceStub(watch_channel).WatchAlarms(
            kms_pb2.WatchAlarmsRequest()
        )
        stream.initial_metadata()

        def watch() -> None:
            try:
                for alarm in stream:
                    latencies.append(time.time() - alarm.time.ToNanoseconds() / 1e9)
            except grpc.RpcError:
                pass

        threading.Thread(target=watch, daemon=True).start()
        refused: list[int] = []
        df2 = ((pki / "df2.key").read_bytes(), (pki / "df2.pem").read_bytes())
        target = Target(f"localhost:{li}", ca, (proc.pid,), GETKEYS_PATH, df2, raw=True)
        print(HEADER)
        try:
            result = run(target, getkeys_unit(requests, refused), seconds=args.seconds)
            print(row("kmsnode GetKeys, 1 in 50 forged", result), flush=True)
        finally:
            stream.cancel()
            watch_channel.close()
    if latencies:
        lat = sorted(x * 1000 for x in latencies)
        print(
            f"alarms: {len(lat)} seen for {len(refused)} forged requests refused; delivery "
            f"p50 {statistics.median(lat):.1f} ms, max {lat[-1]:.1f} ms (goal < 100 ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
