"""The node benchmark (`make bench`): what a user of the node pays per RPC, against a minimal gRPC
echo server driven by the same client, with the same connections, in the same run.

    python -m bench.bench_kms [--seconds 8] [--reps 1] [--store sqlite,pg] [--processes 1,2]
                              [--users 0] [--no-count]

Workloads (each one measured right after its echo baseline, so both see the same machine load;
8 connections, 64 calls in flight unless told otherwise):
- ticket pairs: REQUEST_INIT + RESOLVE_INIT through the UE listener (server-auth TLS), against
  the TLS echo server answering messages of the same sizes;
- GetKeys: XkService/GetKeys through the LI listener (mutual TLS 1.3, df2 certificate, 200 calls
  released over and over, every release audited), against the echo server with mutual TLS
  answering messages of the same size;
- unloaded: one call in flight on one connection: p50/p99 per RPC;
- HSM round trips: PKCS#11 calls per message type, counted by OpenSC's pkcs11-spy between the
  node and SoftHSM on a separate node (sequential calls, the HSM monitor's probes turned off);
- with `--store pg` the same on a PostgreSQL store (a throw-away server with production
  settings: fsync and synchronous_commit on); its CPU is added to the node's;
- with `--processes 2` ticket pairs on `[node] processes = 2` (PostgreSQL; the supervisor and
  both workers counted).

Server CPU is utime + stime of the server's whole process tree over the measured window
(bench/load.py). Ratios printed: echo CPU / node CPU per RPC and node RPC rate / echo RPC rate.
The machine is shared: the load average is printed with every run; compare ratios, not raw µs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.load import Call, Result, Target, Unit, run
from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
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
GETKEYS_PATH = "/kms.v1.XkService/GetKeys"
SPY = "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so"
SERVE = ["firmware.cli", "serve"]  # --serve-module replaces it (bench/aio_ue.py: a prototype)
COUNTED = 20  # messages of each type sent through the spied node


def t_now() -> Timestamp:
    return Timestamp(TsType.NTP_UTC, unix_to_ntp64(time.time()).to_bytes(8, "big"))


def kmsnode(*args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "firmware.cli", *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return out.stdout


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the UE side of a ticket pair ------------------------------------------------------------


def _rands() -> tuple[int, bytes, bytes, bytes]:
    rand = os.urandom(84)  # RANDs as long as the 32-byte PSKs (RFC 6043 12.1)
    return int.from_bytes(rand[:4], "big"), rand[4:36], rand[36:52], rand[52:84]


async def pair(call: Call) -> int:
    alice = Initiator(ALICE, PSK_A, KMS)
    bob = Responder(BOB, PSK_B, KMS)
    csb, rand_i, rand_t, rand_r = _rands()
    alice.process_request_resp(
        await call(alice.request_init(csb_id=csb, t=t_now(), rand_i=rand_i, policy=POLICY))
    )
    ti = alice.transfer_init(
        csb_id=csb, t=t_now(), rand_i=rand_t, sessions=[GenericIdEntry.srtp(1, csb)], responder=BOB
    )
    bob.receive_transfer_init(ti)
    answer = await call(bob.resolve_init(csb_id=csb ^ 1, t=t_now(), rand_r=rand_r))
    if answer[1] != DataType.RESOLVE_RESP:
        raise RuntimeError("resolve refused")
    return 2


def sample_messages() -> tuple[bytes, bytes]:
    """A REQUEST_INIT and a message of a RESOLVE_INIT's size, for the echo baseline."""
    alice = Initiator(ALICE, PSK_A, KMS)
    csb, rand_i, _, _ = _rands()
    init = alice.request_init(csb_id=csb, t=t_now(), rand_i=rand_i, policy=POLICY)
    return init, init + os.urandom(220)


def echo_units(sizes: list[int]) -> Unit:
    payloads = [os.urandom(n) for n in sizes]

    async def unit(call: Call) -> int:
        for data in payloads:
            await call(data)
        return len(payloads)

    return unit


def full_calls(exchange: Callable[[bytes], bytes], n: int) -> list[tuple[bytes, bytes]]:
    """(TRANSFER_INIT, TRANSFER_RESP) of n whole calls alice -> bob made through `exchange`."""
    from tests.calls import full_call

    calls = []
    for _ in range(n):
        call = full_call(exchange, time.time())
        calls.append((call.transfer_init, call.transfer_resp))
    return calls


def getkeys_requests(calls: list[tuple[bytes, bytes]], forged_every: int = 0) -> list[bytes]:
    """Serialized GetKeysRequests for bob's side of each call; with `forged_every` = k every k-th
    names alice (not the call's responder) under her warrant: refused with an alarm."""
    out = []
    for i, (init, resp) in enumerate(calls):
        forged = forged_every > 0 and i % forged_every == forged_every - 1
        out.append(
            kms_pb2.GetKeysRequest(
                target_identity=(ALICE if forged else BOB).decode(),
                target_role=kms_pb2.TARGET_ROLE_RESPONDER,
                transfer_init=init,
                transfer_resp=resp,
                liid="LI-A" if forged else "LI-B",
                correlation_id="bench",
            ).SerializeToString()
        )
    return out


def getkeys_unit(requests: list[bytes], refused: list[int] | None = None) -> Unit:
    counter = iter(range(1 << 62))

    async def unit(call: Call) -> int:
        data = requests[next(counter) % len(requests)]
        try:
            await call(data)
        except grpc.aio.AioRpcError as err:
            if refused is None or err.code() != grpc.StatusCode.PERMISSION_DENIED:
                raise
            refused.append(1)
        return 1

    return unit


# --- processes under test --------------------------------------------------------------------


def start(
    cmd: list[str], patterns: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], list[int]]:
    """Start `cmd` and read one port from each of the first lines matching `patterns`."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stdout is not None
    ports: list[int] = []
    for _ in range(10):
        line = proc.stdout.readline()
        match = re.search(patterns[len(ports)], line)
        if match:
            ports.append(int(match.group(1)))
            if len(ports) == len(patterns):
                return proc, ports
    proc.kill()
    raise SystemExit(f"{' '.join(cmd[:4])} did not start")


@dataclass
class DevNode:
    """A throw-away node (kmsnode dev-init) with alice, bob and two warrants."""

    work: Path
    store_url: str | None = None
    warranted: bool = False
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def config(self) -> Path:
        return self.work / "kmsnode.toml"

    @property
    def pki(self) -> Path:
        return self.work / "pki"

    def edit(self, section: str, line: str) -> None:
        """Set `line` (key = value) in [section] of the config."""
        text = self.config.read_text()
        if f"[{section}]\n" not in text:
            text += f"\n[{section}]\n"
        self.config.write_text(text.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1))

    def cli(self, *args: str) -> str:
        return kmsnode(*args, "--config", str(self.config), env=self.env)

    def serve(self) -> tuple[subprocess.Popen[str], int, int]:
        cmd = [sys.executable, "-m", *SERVE, "--config", str(self.config)]
        proc, (ue, li) = start(
            cmd, [r"UE listener on .*:(\d+)", r"LI listener on .*:(\d+)"], self.env
        )
        return proc, ue, li


def dev_node(
    prefix: str, *, store_url: str | None = None, processes: int = 1, workers: int = 0
) -> DevNode:
    work = Path(tempfile.mkdtemp(prefix=prefix))
    ports = ["0", "0"] if processes == 1 else [str(free_port()), str(free_port())]
    kmsnode(
        "dev-init", str(work), "--ue-port", ports[0], "--li-port", ports[1], "--metrics-port", "0"
    )
    node = DevNode(work, store_url)
    if store_url:
        node.edit("store", f'url = "{store_url}"')
    if processes > 1:
        node.edit("node", f"processes = {processes}")
    if workers:
        node.edit("node", f"workers = {workers}")
    for who, psk in ((ALICE, PSK_A), (BOB, PSK_B)):
        (work / "psk").write_text(psk.hex())
        node.cli("user", "add", who.decode(), "--psk-file", str(work / "psk"))
    return node


def add_warrants(node: DevNode) -> None:
    """Warrants for bob (LI-B) and alice (LI-A), through the serving node's admin API (once)."""
    if node.warranted:
        return
    node.warranted = True
    for liid, target in (("LI-B", BOB), ("LI-A", ALICE)):
        node.cli(
            "warrant", "add", "--liid", liid, "--target", target.decode(),
            "--df2", "df2.li.example.net",
        )  # fmt: skip


@contextmanager
def serving(node: DevNode) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    proc, ue, li = node.serve()
    try:
        yield proc, ue, li
    finally:
        proc.terminate()
        proc.wait()


@dataclass
class Echoes:
    """The TLS echo (the UE listener's baseline) and the mutual-TLS echo (the LI listener's)."""

    tls: Target
    mtls: Target


@contextmanager
def echo_servers(pki: Path) -> Iterator[Echoes]:
    echo = [sys.executable, "-m", "bench.echo_server"]
    ca = (pki / "ca.pem").read_bytes()
    df2 = ((pki / "df2.key").read_bytes(), (pki / "df2.pem").read_bytes())
    tls, (tls_port,) = start(
        [*echo, str(pki / "server.pem"), str(pki / "server.key")], [r"PORT (\d+)"]
    )
    mtls, (mtls_port,) = start(
        [*echo, str(pki / "li-server.pem"), str(pki / "li-server.key"), str(pki / "li-ca.pem")],
        [r"PORT (\d+)"],
    )
    try:
        yield Echoes(
            Target(f"localhost:{tls_port}", ca, (tls.pid,)),
            Target(f"localhost:{mtls_port}", ca, (mtls.pid,), client_cert=df2),
        )
    finally:
        for proc in (tls, mtls):
            proc.terminate()
            proc.wait()


def exchange_through(port: int, ca: bytes) -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
    channel = grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca))
    stub = kms_pb2_grpc.TicketServiceStub(channel)

    def exchange(data: bytes) -> bytes:
        return bytes(stub.Exchange(kms_pb2.MikeyMessage(data=data), timeout=10).data)

    return exchange, channel.close


# --- reporting -------------------------------------------------------------------------------

HEADER = (
    f"{'server':<34} {'units/s':>8} {'RPC/s':>7} {'p50 ms':>7} {'p99 ms':>7}"
    f" {'srv us/RPC':>10} {'of it PG':>8} {'sw/RPC':>6} {'cli us/RPC':>10} {'errors':>6}"
)


def row(name: str, r: Result) -> str:
    return (
        f"{name:<34} {r.unit_rate:>8.0f} {r.rpc_rate:>7.0f} {r.p50:>7.2f} {r.pct(99):>7.2f}"
        f" {r.server_us:>10.0f} {r.side_us:>8.0f} {r.switches_per_rpc:>6.1f} {r.client_us:>10.0f}"
        f" {r.errors:>6}"
    )


@dataclass
class Comparison:
    name: str
    echo: list[Result] = field(default_factory=list)
    node: list[Result] = field(default_factory=list)

    def cpu_ratio(self) -> float:
        return statistics.median(
            e.server_us / n.server_us for e, n in zip(self.echo, self.node, strict=True)
        )

    def rate_ratio(self) -> float:
        return statistics.median(
            n.rpc_rate / e.rpc_rate for e, n in zip(self.echo, self.node, strict=True)
        )

    def node_us(self) -> float:
        return statistics.median(n.server_us for n in self.node)

    def echo_us(self) -> float:
        return statistics.median(e.server_us for e in self.echo)

    def side_us(self) -> float:
        return statistics.median(n.side_us for n in self.node)

    def switches(self) -> tuple[float, float]:
        """Median context switches per RPC: the node's, the echo server's."""
        return (
            statistics.median(n.switches_per_rpc for n in self.node),
            statistics.median(e.switches_per_rpc for e in self.echo),
        )

    def client_us(self) -> float:
        return statistics.median(n.client_us for n in self.node)

    def node_rate(self) -> float:
        return statistics.median(n.unit_rate for n in self.node)


def compare(
    comparison: Comparison,
    echo: Target,
    echo_unit: Unit,
    node: Target,
    node_unit: Unit,
    args: argparse.Namespace,
) -> None:
    for _ in range(args.reps):
        e = run(echo, echo_unit, seconds=args.seconds)
        print(row(f"echo for {comparison.name}", e), flush=True)
        n = run(node, node_unit, seconds=args.seconds)
        print(row(comparison.name, n), flush=True)
        comparison.echo.append(e)
        comparison.node.append(n)


# --- HSM round trips -------------------------------------------------------------------------

_SPY_CALL = re.compile(rb"(?m)^\d+: (C_\w+)")


class SpyLog:
    """PKCS#11 calls the node made since the last `take()`, read from pkcs11-spy's output."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def take(self) -> collections.Counter[str]:
        data = self.path.read_bytes()
        new, self.offset = data[self.offset :], len(data)
        return collections.Counter(m.decode() for m in _SPY_CALL.findall(new))


def count_round_trips(n: int) -> dict[str, tuple[float, collections.Counter[str]]]:
    """PKCS#11 calls per REQUEST_INIT, RESOLVE_INIT and GetKeys (means over n of each)."""
    node = dev_node("kmsnode-bench-spy-")
    spy_log = node.work / "pkcs11-spy.log"
    text = node.config.read_text()
    module = re.search(r'(?m)^module = "(.*)"', text)
    assert module is not None
    node.env.update(PKCS11SPY=module.group(1), PKCS11SPY_OUTPUT=str(spy_log))
    text = text.replace(f'module = "{module.group(1)}"', f'module = "{SPY}"')
    node.config.write_text(text.replace("probe_interval = 2.0", "probe_interval = 3600.0"))
    totals: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    seen: collections.Counter[str] = collections.Counter()
    ca = (node.pki / "ca.pem").read_bytes()
    with serving(node) as (_, ue, li):
        add_warrants(node)
        spy = SpyLog(spy_log)
        exchange, close = exchange_through(ue, ca)

        def counted(data: bytes) -> bytes:
            spy.take()
            answer = exchange(data)
            kind = DataType(data[1]).name
            totals[kind] += spy.take()
            seen[kind] += 1
            return answer

        calls = full_calls(counted, n)
        close()
        creds = grpc.ssl_channel_credentials(
            ca, (node.pki / "df2.key").read_bytes(), (node.pki / "df2.pem").read_bytes()
        )
        with grpc.secure_channel(f"localhost:{li}", creds) as channel:
            get_keys = channel.unary_unary(GETKEYS_PATH)
            for request in getkeys_requests(calls):
                spy.take()
                get_keys(request, timeout=10)
                totals["GetKeys"] += spy.take()
                seen["GetKeys"] += 1
    return {
        kind: (sum(totals[kind].values()) / seen[kind], totals[kind])
        for kind in ("REQUEST_INIT_PSK", "RESOLVE_INIT_PSK", "GetKeys")
    }


# --- the benchmark ---------------------------------------------------------------------------


@dataclass
class StoreRun:
    name: str
    pairs: Comparison
    getkeys: Comparison
    unloaded: dict[str, Result] = field(default_factory=dict)


def run_store(
    name: str, node: DevNode, extra_pids: tuple[int, ...], args: argparse.Namespace
) -> StoreRun:
    ca = (node.pki / "ca.pem").read_bytes()
    df2 = ((node.pki / "df2.key").read_bytes(), (node.pki / "df2.pem").read_bytes())
    small, large = sample_messages()
    out = StoreRun(name, Comparison(f"ticket pairs, {name}"), Comparison(f"GetKeys, {name}"))
    with echo_servers(node.pki) as echoes, serving(node) as (proc, ue, li):
        add_warrants(node)
        exchange, close = exchange_through(ue, ca)
        requests = getkeys_requests(full_calls(exchange, args.calls))
        close()
        tls_echo, mtls_echo = echoes.tls, echoes.mtls
        pids = (proc.pid,)
        ue_target = Target(f"localhost:{ue}", ca, pids, side_pids=extra_pids)
        li_target = Target(
            f"localhost:{li}", ca, pids, GETKEYS_PATH, df2, raw=True, side_pids=extra_pids
        )
        echo_pair = echo_units([len(small), len(large)])
        echo_getkeys = echo_units([len(requests[0])])
        only = set(args.only.split(",")) if args.only else {"pairs", "getkeys", "unloaded"}
        if "pairs" in only:
            compare(out.pairs, tls_echo, echo_pair, ue_target, pair, args)
        if "getkeys" in only:
            compare(out.getkeys, mtls_echo, echo_getkeys, li_target, getkeys_unit(requests), args)
        if "unloaded" not in only:
            return out
        quiet = argparse.Namespace(**{**vars(args), "seconds": min(args.seconds, 4.0)})
        for label, target, unit in (
            ("echo", tls_echo, echo_pair),
            ("ticket RPC", ue_target, pair),
            ("GetKeys", li_target, getkeys_unit(requests)),
        ):
            r = run(target, unit, in_flight=1, connections=1, seconds=quiet.seconds)
            print(row(f"{label}, 1 in flight, {name}", r), flush=True)
            out.unloaded[label] = r
    return out


def run_processes(
    count: int, store_url: str, pg_pids: tuple[int, ...], args: argparse.Namespace
) -> Comparison:
    node = dev_node(
        f"kmsnode-bench-p{count}-", store_url=store_url, processes=count, workers=args.workers
    )
    ca = (node.pki / "ca.pem").read_bytes()
    small, large = sample_messages()
    comparison = Comparison(f"ticket pairs, PostgreSQL, {count} processes")
    with echo_servers(node.pki) as echoes, serving(node) as (proc, ue, _):
        tls_echo = echoes.tls
        ue_target = Target(f"localhost:{ue}", ca, (proc.pid,), side_pids=pg_pids)
        compare(comparison, tls_echo, echo_units([len(small), len(large)]), ue_target, pair, args)
    return comparison


def add_users(db: Path, count: int) -> None:
    con = sqlite3.connect(db)
    kek, blob = con.execute("SELECT kek_version, wrapped_psk FROM users LIMIT 1").fetchone()
    with con:
        base = con.execute("SELECT coalesce(max(id), 0) FROM users").fetchone()[0] + 1
        con.executemany(
            "INSERT INTO users (id, identity, psk_id, kek_version, wrapped_psk) VALUES (?,?,?,?,?)",
            (
                (base + i, f"sip:u{i}@bench.example.net", f"sip:u{i}@bench.example.net".encode(),
                 kek, blob)
                for i in range(count)
            ),
        )  # fmt: skip
        con.executemany(
            "INSERT INTO identities (identity, user_id, is_alias) VALUES (?,?,0)",
            ((f"sip:u{i}@bench.example.net", base + i) for i in range(count)),
        )
    con.close()


def summary(run_: StoreRun) -> list[str]:
    lines = []
    for c, label, goals in (
        (run_.pairs, "ticket RPC", "CPU goal >= 0.30, rate goal >= 0.30"),
        (run_.getkeys, "GetKeys", "CPU goal >= 0.22, rate goal >= 0.25"),
    ):
        if c.node:
            lines.append(
                f"[{run_.name}] {label}: server CPU {c.node_us():.0f} us (of it PostgreSQL"
                f" {c.side_us():.0f}; echo {c.echo_us():.0f});"
                f" echo CPU / node CPU {c.cpu_ratio():.2f}, node rate / echo rate"
                f" {c.rate_ratio():.2f} ({goals}); {c.node_rate():.0f} units/s;"
                f" context switches per RPC {c.switches()[0]:.1f} (echo {c.switches()[1]:.1f})"
            )
    for label, r in run_.unloaded.items():
        lines.append(f"[{run_.name}] unloaded {label}: p50 {r.p50:.2f} ms, p99 {r.pct(99):.2f} ms")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--reps", type=int, default=1, help="echo/node rounds per workload")
    parser.add_argument("--store", default="sqlite", help="comma list of sqlite, pg")
    parser.add_argument("--processes", default="", help="comma list, e.g. 1,2 (PostgreSQL)")
    parser.add_argument("--calls", type=int, default=200, help="calls GetKeys cycles through")
    parser.add_argument("--users", type=int, default=0, help="also run with this many users")
    parser.add_argument("--no-count", action="store_true", help="skip the HSM round trip count")
    parser.add_argument("--workers", type=int, default=0, help="set [node] workers")
    parser.add_argument("--only", default="", help="comma list of pairs, getkeys, unloaded")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--serve-module", help="serve the node with this module (a prototype)")
    args = parser.parse_args()
    if args.serve_module:
        SERVE[:] = [args.serve_module]
    stores = [s for s in args.store.split(",") if s]
    processes = [int(p) for p in args.processes.split(",") if p]
    print(f"load average before: {load_average()}  (nproc {os.cpu_count()})")
    print(HEADER)
    runs: list[StoreRun] = []
    procs: list[Comparison] = []
    if "sqlite" in stores:
        node = dev_node("kmsnode-bench-", workers=args.workers)
        runs.append(run_store("SQLite", node, (), args))
        if args.users:
            add_users(node.work / "state.sqlite", args.users)
            runs.append(run_store(f"SQLite, {args.users:,} users", node, (), args))
    if "pg" in stores or processes:
        from firmware.devpg import PgServer

        pg = PgServer(options=())
        try:
            pg_root = int((pg.data / "postmaster.pid").read_text().split()[0])
            if "pg" in stores:
                node = dev_node(
                    "kmsnode-bench-pg-", store_url=pg.url(pg.database()), workers=args.workers
                )
                runs.append(run_store("PostgreSQL", node, (pg_root,), args))
            for count in processes:
                procs.append(run_processes(count, pg.url(pg.database()), (pg_root,), args))
        finally:
            pg.close()
    counts = {} if args.no_count else count_round_trips(COUNTED)
    print(f"load average after: {load_average()}")
    print()
    for run_ in runs:
        print("\n".join(summary(run_)))
    by_name = {r.name: r for r in runs}
    if "SQLite" in by_name and "PostgreSQL" in by_name and by_name["SQLite"].pairs.node:
        s, p = by_name["SQLite"], by_name["PostgreSQL"]
        print(
            f"PostgreSQL / SQLite server CPU (node + PostgreSQL): ticket RPC"
            f" {p.pairs.node_us() / s.pairs.node_us():.2f},"
            f" GetKeys {p.getkeys.node_us() / s.getkeys.node_us():.2f} (goal <= 1.3)"
        )
    for c in procs:
        print(
            f"[{c.name}] {c.node_rate():.0f} pairs/s, node rate / echo rate {c.rate_ratio():.2f},"
            f" server CPU per RPC {c.node_us():.0f} us (of it PostgreSQL {c.side_us():.0f};"
            f" echo {c.echo_us():.0f}), client CPU per RPC {c.client_us():.0f} us"
        )
    for kind, (mean, calls) in counts.items():
        detail = ", ".join(f"{name} {n / COUNTED:g}" for name, n in sorted(calls.items()))
        print(f"HSM round trips per {kind}: {mean:g} ({detail})")
    if args.json:
        figures = {
            "load": load_average(),
            "stores": {r.name: summary(r) for r in runs},
            "processes": {c.name: [c.node_rate(), c.rate_ratio(), c.node_us()] for c in procs},
            "round_trips": {k: [m, dict(c)] for k, (m, c) in counts.items()},
        }
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
