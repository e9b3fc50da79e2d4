"""Benchmark: full request+resolve pairs through the real TLS server on SoftHSM, side by side with
a minimal gRPC TLS echo server driven by the same client in the same run (64 calls in flight),
then again with 1,000,000 provisioned users.

    python -m bench.bench_kms [--seconds 8] [--users 1000000]

Prints pairs/s, RPC/s, p50/p99 per RPC, the server's and the client's CPU per RPC, and the ratios
the issue sets goals on: KMS RPC rate / echo RPC rate (goal >= 0.40), p99 (goal < 50 ms) and the
rate with 1M users / the rate with 2 users (goal: drop < 10%).
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.load import Result, run
from firmware.core.freshness import unix_to_ntp64
from firmware.mikey.codec import GenericIdEntry, RoleIdentity, TicketPolicy, Timestamp, TpFlags
from firmware.mikey.constants import DataType, IdRole, IdType, TsType
from firmware.mikey.exchange import Initiator, Responder
from firmware.mikey.prf import PrfFunc

KMS = b"sip:kms.ims.example.net"
ALICE, BOB = b"sip:alice@ims.example.net", b"sip:bob@ims.example.net"
PSK_A, PSK_B = bytes(range(32)), bytes(range(32, 64))
POLICY = TicketPolicy(
    1,
    1,
    1,
    PrfFunc.MIKEY_1,
    TpFlags.E | TpFlags.H | TpFlags.I | TpFlags.F,
    (RoleIdentity(IdRole.IDRr, IdType.URI, BOB),),
)


def t_now() -> Timestamp:
    return Timestamp(TsType.NTP_UTC, unix_to_ntp64(time.time()).to_bytes(8, "big"))


def kmsnode(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "firmware.cli", *args], capture_output=True, text=True, check=True
    )
    return out.stdout


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(cmd: list[str], pattern: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for _ in range(5):
        match = re.search(pattern, proc.stdout.readline())
        if match:
            return proc, int(match.group(1))
    proc.kill()
    raise SystemExit(f"{cmd[2]} did not start")


async def pair(call) -> int:  # type: ignore[no-untyped-def]
    alice = Initiator(ALICE, PSK_A, KMS)
    bob = Responder(BOB, PSK_B, KMS)
    rand = os.urandom(100)  # RANDs as long as the 32-byte PSKs (RFC 6043 12.1)
    csb = int.from_bytes(rand[:4], "big")
    alice.process_request_resp(
        await call(alice.request_init(csb_id=csb, t=t_now(), rand_i=rand[4:36], policy=POLICY))
    )
    ti = alice.transfer_init(
        csb_id=csb,
        t=t_now(),
        rand_i=rand[36:52],
        sessions=[GenericIdEntry.srtp(1, csb)],
        responder=BOB,
    )
    bob.receive_transfer_init(ti)
    answer = await call(bob.resolve_init(csb_id=csb ^ 1, t=t_now(), rand_r=rand[52:84]))
    if answer[1] != DataType.RESOLVE_RESP:
        raise RuntimeError("resolve refused")
    return 2


def sample_messages() -> tuple[bytes, bytes]:
    alice = Initiator(ALICE, PSK_A, KMS)
    init = alice.request_init(csb_id=1, t=t_now(), rand_i=os.urandom(32), policy=POLICY)
    return init, init + os.urandom(220)  # sizes of a REQUEST_INIT and a RESOLVE_INIT


def measure(target: str, ca: bytes, unit, pid: int, seconds: float) -> tuple[Result, float]:  # type: ignore[no-untyped-def]
    before = cpu_seconds(pid)
    result = run(target, ca, unit, in_flight=64, seconds=seconds)
    return result, cpu_seconds(pid) - before


def row(name: str, r: Result, server_cpu: float) -> str:
    return (
        f"{name:<28} {r.unit_rate:>9.0f} {r.rpc_rate:>9.0f} {r.p50:>7.1f} {r.pct(99):>7.1f}"
        f" {server_cpu / max(r.rpcs, 1) * 1e6:>10.0f} {r.client_cpu / max(r.rpcs, 1) * 1e6:>10.0f}"
        f" {r.errors:>6}"
    )


def add_users(db: Path, count: int) -> None:
    con = sqlite3.connect(db)
    kek, blob = con.execute("SELECT kek_version, wrapped_psk FROM users LIMIT 1").fetchone()
    with con:
        base = con.execute("SELECT coalesce(max(id), 0) FROM users").fetchone()[0] + 1
        con.executemany(
            "INSERT INTO users (id, identity, psk_id, kek_version, wrapped_psk) VALUES (?,?,?,?,?)",
            (
                (
                    base + i,
                    f"sip:u{i}@bench.example.net",
                    f"sip:u{i}@bench.example.net".encode(),
                    kek,
                    blob,
                )
                for i in range(count)
            ),
        )
        con.executemany(
            "INSERT INTO identities (identity, user_id, is_alias) VALUES (?,?,0)",
            ((f"sip:u{i}@bench.example.net", base + i) for i in range(count)),
        )
    con.close()


def dev_node(prefix: str, workers: int = 0) -> tuple[Path, str, Path]:
    """A throw-away node (kmsnode dev-init) with alice and bob; (directory, config, pki dir)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    kmsnode("dev-init", str(work), "--ue-port", "0", "--li-port", "0")
    config = str(work / "kmsnode.toml")
    if workers:
        text = (work / "kmsnode.toml").read_text()
        (work / "kmsnode.toml").write_text(
            text.replace('data_dir = "."', f'data_dir = "."\nworkers = {workers}')
        )
    for who, psk in ((ALICE, PSK_A), (BOB, PSK_B)):
        (work / "psk").write_text(psk.hex())
        kmsnode("user", "add", who.decode(), "--psk-file", str(work / "psk"), "--config", config)
    return work, config, work / "pki"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=0, help="override [node] workers")
    args = parser.parse_args()
    work, config, pki = dev_node("kmsnode-bench-", args.workers)
    ca = (pki / "ca.pem").read_bytes()
    serve = [sys.executable, "-m", "firmware.cli", "serve", "--config", config]
    echo_cmd = [
        sys.executable,
        "-m",
        "bench.echo_server",
        str(pki / "server.pem"),
        str(pki / "server.key"),
    ]
    small, large = sample_messages()

    async def echo_pair(call) -> int:  # type: ignore[no-untyped-def]
        await call(small)
        await call(large)
        return 2

    header = (
        f"{'server':<28} {'pairs/s':>9} {'RPC/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'srv us/RPC':>10} {'cli us/RPC':>10} {'errors':>6}"
    )
    print(header)
    echo, port = start(echo_cmd, r"PORT (\d+)")
    node, node_port = start(serve, r"UE listener on .*:(\d+)")
    try:
        r_echo, c_echo = measure(f"localhost:{port}", ca, echo_pair, echo.pid, args.seconds)
        print(row("echo (sync, TLS)", r_echo, c_echo), flush=True)
        r_kms, c_kms = measure(f"localhost:{node_port}", ca, pair, node.pid, args.seconds)
        print(row("kmsnode, 2 users", r_kms, c_kms), flush=True)
    finally:
        node.terminate()
        node.wait()
    r_big = None
    if args.users:
        t0 = time.monotonic()
        add_users(work / "state.sqlite", args.users)
        print(f"(provisioned {args.users:,} users in {time.monotonic() - t0:.1f} s)")
        node, node_port = start(serve, r"UE listener on .*:(\d+)")
        try:
            r_big, c_big = measure(f"localhost:{node_port}", ca, pair, node.pid, args.seconds)
            print(row(f"kmsnode, {args.users:,} users", r_big, c_big), flush=True)
        finally:
            node.terminate()
            node.wait()
    echo.terminate()
    echo.wait()
    print()
    print(f"KMS RPC rate / echo RPC rate: {r_kms.rpc_rate / r_echo.rpc_rate:.2f} (goal >= 0.40)")
    print(f"KMS p99: {r_kms.pct(99):.1f} ms (goal < 50 ms)")
    if r_big is not None:
        print(
            f"rate with {args.users:,} users / with 2 users: "
            f"{r_big.unit_rate / r_kms.unit_rate:.2f} (goal >= 0.90)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
