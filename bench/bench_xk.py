"""Benchmark: Xk GetKeys per second and p50/p99 at 64 in flight through the real mutual-TLS LI
listener on SoftHSM, against the minimal gRPC TLS echo server driven by the same client in the
same run; and how fast alarms reach a watcher under that load.

    python -m bench.bench_xk [--seconds 8] [--calls 200]

Goals (issue 5): GetKeys rate >= 40% of the echo RPC rate, p99 < 50 ms, alarms delivered to a
watcher within 100 ms at that load. One GetKeys in 50 is a forged request (bob's call named as
alice's) that must be refused with an alarm; the watcher measures from the alarm's time stamp
(set by the node when it raised the alarm) to its arrival.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

import grpc

from bench.bench_kms import (
    ALICE,
    BOB,
    cpu_seconds,
    dev_node,
    kmsnode,
    measure,
    row,
    sample_messages,
    start,
)
from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from tests.calls import full_call


def make_calls(port: int, ca: bytes, n: int) -> list[tuple[bytes, bytes]]:
    channel = grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca))
    stub = kms_pb2_grpc.TicketServiceStub(channel)

    def exchange(data: bytes) -> bytes:
        return bytes(stub.Exchange(kms_pb2.MikeyMessage(data=data), timeout=10).data)

    calls = []
    for _ in range(n):
        call = full_call(exchange, time.time())
        calls.append((call.transfer_init, call.transfer_resp))
    channel.close()
    return calls


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--workers", type=int, default=0, help="override [node] workers")
    args = parser.parse_args()
    work, config, pki = dev_node("kmsnode-bench-xk-", args.workers)
    ca = (pki / "ca.pem").read_bytes()
    serve = [sys.executable, "-m", "firmware.cli", "serve", "--config", config]
    node, _ = start(serve, r"UE listener on .*:(\d+)")
    listeners = json.loads((work / "listeners.json").read_text())
    ue_port, li_port = (int(listeners[k].rsplit(":", 1)[1]) for k in ("ue", "li"))
    for liid, target in (("LI-B", BOB), ("LI-A", ALICE)):
        kmsnode(
            "warrant",
            "add",
            "--liid",
            liid,
            "--target",
            target.decode(),
            "--df2",
            "df2.li.example.net",
            "--config",
            config,
        )
    calls = make_calls(ue_port, ca, args.calls)

    creds = grpc.ssl_channel_credentials(
        ca, (pki / "admin.key").read_bytes(), (pki / "admin.pem").read_bytes()
    )
    latencies: list[float] = []
    watch_channel = grpc.secure_channel(f"localhost:{li_port}", creds)
    stream = kms_pb2_grpc.AdminServiceStub(watch_channel).WatchAlarms(kms_pb2.WatchAlarmsRequest())
    stream.initial_metadata()

    def watch() -> None:
        try:
            for alarm in stream:
                latencies.append(time.time() - alarm.time.ToNanoseconds() / 1e9)
        except grpc.RpcError:
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    counter = {"n": 0}
    refused = {"n": 0}

    async def get_keys(call) -> int:  # type: ignore[no-untyped-def]
        counter["n"] += 1
        init, resp = calls[counter["n"] % len(calls)]
        forged = counter["n"] % 50 == 0
        request = kms_pb2.GetKeysRequest(
            target_identity=(ALICE if forged else BOB).decode(),
            target_role=kms_pb2.TARGET_ROLE_RESPONDER,
            transfer_init=init,
            transfer_resp=resp,
            liid="LI-A" if forged else "LI-B",
            correlation_id="bench",
        )
        try:
            await call(request.SerializeToString())
        except grpc.aio.AioRpcError as err:
            if not forged or err.code() != grpc.StatusCode.PERMISSION_DENIED:
                raise
            refused["n"] += 1
        return 1

    from bench import load

    def run_li() -> tuple[load.Result, float]:
        before = cpu_seconds(node.pid)
        result = load.run_raw(
            f"localhost:{li_port}",
            ca,
            get_keys,
            "/kms.v1.XkService/GetKeys",
            client_cert=((pki / "df2.key").read_bytes(), (pki / "df2.pem").read_bytes()),
            seconds=args.seconds,
        )
        return result, cpu_seconds(node.pid) - before

    echo_cmd = [
        sys.executable,
        "-m",
        "bench.echo_server",
        str(pki / "server.pem"),
        str(pki / "server.key"),
    ]
    echo, echo_port = start(echo_cmd, r"PORT (\d+)")
    small, large = sample_messages()

    async def echo_one(call) -> int:  # type: ignore[no-untyped-def]
        await call(large + small)
        return 1

    print(
        f"{'server':<28} {'calls/s':>9} {'RPC/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'srv us/RPC':>10} {'cli us/RPC':>10} {'errors':>6}"
    )
    try:
        r_echo, c_echo = measure(f"localhost:{echo_port}", ca, echo_one, echo.pid, args.seconds)
        print(row("echo (sync, TLS)", r_echo, c_echo), flush=True)
        r_xk, c_xk = run_li()
        print(row("kmsnode GetKeys (mTLS)", r_xk, c_xk), flush=True)
    finally:
        echo.terminate()
        stream.cancel()
        watch_channel.close()
        node.terminate()
        node.wait()
    print()
    print(f"GetKeys rate / echo RPC rate: {r_xk.rpc_rate / r_echo.rpc_rate:.2f} (goal >= 0.40)")
    print(f"GetKeys p99: {r_xk.pct(99):.1f} ms (goal < 50 ms)")
    if latencies:
        lat = sorted(x * 1000 for x in latencies)
        print(
            f"alarms: {len(lat)} seen for {refused['n']} forged requests refused; delivery "
            f"p50 {statistics.median(lat):.1f} ms, max {lat[-1]:.1f} ms (goal < 100 ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
