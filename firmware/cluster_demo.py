"""`make cluster-demo`: one KMS on three nodes and a throw-away PostgreSQL, end to end, on loopback.

A PostgreSQL server of its own (firmware/devpg.py, as the `postgres` system user in a temp
folder) -> `kmsnode dev-init` (SoftHSM token, dev PKI) -> three `kmsnode serve` nodes sharing the
database (users, warrants, resolutions, key versions, the replay cache, alarms) -> alice's ticket
is issued on node 1, bob resolves it on node 2, a DF2 fetches bob's keys on node 3; a forged
request on node 3 is refused and its alarm is seen by a watcher on node 1; node 2 is killed
(SIGKILL) and node 1 still releases the call's keys; every node's audit chain verifies; all
stops. The three nodes share one SoftHSM token here (one machine); across machines every HSM
holds the same key versions, moved wrapped (`kmsnode keys export-wrapped` / `import-wrapped`).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.devpg import PgServer
from firmware.mikey.codec import GenericIdEntry, RoleIdentity, TicketPolicy, Timestamp, TpFlags
from firmware.mikey.constants import IdRole, IdType, TsType
from firmware.mikey.exchange import Initiator, Responder
from firmware.mikey.prf import PrfFunc

KMS = b"sip:kms.ims.example.net"
ALICE, BOB = "sip:alice@ims.example.net", "sip:bob@ims.example.net"
DEADLINE = 20.0
NODES = ("node-1", "node-2", "node-3")


def _t() -> Timestamp:
    from firmware.core.freshness import unix_to_ntp64

    return Timestamp(TsType.NTP_UTC, unix_to_ntp64(time.time()).to_bytes(8, "big"))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}


class Node:
    def __init__(self, root: Path, name: str, url: str) -> None:
        self.root, self.name = root, name
        text = (root / "kmsnode.toml").read_text()
        text = text.replace('data_dir = "."', f'data_dir = "{name}"\nnode_id = "{name}"', 1)
        self.config = root / f"{name}.toml"
        self.config.write_text(text + f'\n[store]\nurl = "{url}"\n')
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "firmware.cli", "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(),
        )  # fmt: skip
        assert self.proc.stdout is not None
        lines = [self.proc.stdout.readline(), self.proc.stdout.readline()]
        if not lines[0].startswith("UE listener on"):
            raise SystemExit(f"{name} did not start")
        self.ue = int(lines[0].rsplit(":", 1)[1])
        self.li = int(lines[1].rsplit(":", 1)[1])
        print(f"  {name}: UE :{self.ue}  LI :{self.li}")

    def channel(self, listener: str, client: str | None = None) -> grpc.Channel:
        pki = self.root / "pki"
        ca = (pki / "ca.pem").read_bytes()
        port = self.ue if listener == "ue" else self.li
        if client is None:
            return grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca))
        key, cert = (pki / f"{client}.key").read_bytes(), (pki / f"{client}.pem").read_bytes()
        return grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca, key, cert))

    def kms(self) -> Any:
        stub = kms_pb2_grpc.TicketServiceStub(self.channel("ue"))
        return lambda data: bytes(
            stub.Exchange(kms_pb2.MikeyMessage(data=data), timeout=DEADLINE).data
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


def _watch(node: Node, seen: queue.SimpleQueue[Any]) -> Any:
    call = kms_pb2_grpc.AdminServiceStub(node.channel("li", "admin")).WatchAlarms(
        kms_pb2.WatchAlarmsRequest(), timeout=120
    )
    call.initial_metadata()

    def read() -> None:
        try:
            for alarm in call:
                seen.put(alarm)
        except grpc.RpcError:
            pass

    threading.Thread(target=read, daemon=True).start()
    return call


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="kmsnode-cluster-"))
    print("== a throw-away PostgreSQL (as the postgres system user)")
    pg = PgServer(options=())
    nodes: list[Node] = []
    ok = False
    try:
        url = pg.url(pg.database())
        print(f"  {url}")
        print(f"== dev-init {root}")
        done = subprocess.run(
            [sys.executable, "-m", "firmware.cli", "dev-init", str(root), "--ue-port", "0",
             "--li-port", "0", "--metrics-port", "0"],
            capture_output=True, text=True, env=_env(), check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        print("== three nodes on one database")
        nodes = [Node(root, name, url) for name in NODES]
        one, two, three = nodes
        admin = kms_pb2_grpc.AdminServiceStub(one.channel("li", "admin"))
        psks = {}
        for who in (ALICE, BOB):
            psks[who] = admin.PutUser(kms_pb2.PutUserRequest(identity=who), timeout=DEADLINE).psk
        print("  alice and bob provisioned on node-1 (PSKs generated by the HSM)")
        alice = Initiator(ALICE.encode(), psks[ALICE], KMS)
        bob = Responder(BOB.encode(), psks[BOB], KMS)
        policy = TicketPolicy(
            1, 1, 1, PrfFunc.MIKEY_1, TpFlags.E | TpFlags.H | TpFlags.I | TpFlags.F,
            (RoleIdentity(IdRole.IDRr, IdType.URI, BOB.encode()),),
        )  # fmt: skip
        print("== alice: REQUEST_INIT on node-1")
        alice.process_request_resp(
            one.kms()(alice.request_init(csb_id=1, t=_t(), rand_i=os.urandom(32), policy=policy))
        )
        offer = alice.transfer_init(csb_id=0xC0FFEE, t=_t(), rand_i=os.urandom(32),
                                    sessions=[GenericIdEntry.srtp(1, 0x1234, roc=0, seq=1)],
                                    responder=BOB.encode())  # fmt: skip
        bob.receive_transfer_init(offer)
        print("== bob: RESOLVE_INIT on node-2")
        bob.process_resolve_resp(
            two.kms()(bob.resolve_init(csb_id=2, t=_t(), rand_r=os.urandom(32)))
        )
        answer = bob.transfer_resp(t=_t(), rand_r=os.urandom(32))
        keys = alice.process_transfer_resp(answer)
        print(f"  alice and bob share TEK {keys[0].tek.hex()}")
        now = time.time()
        for liid, target in (("LI-0001", BOB), ("LI-0002", ALICE)):
            warrant = kms_pb2.Warrant(liid=liid, target_identity=target,
                                      df2_identities=["df2.li.example.net"])  # fmt: skip
            warrant.valid_from.FromSeconds(int(now - 60))
            warrant.valid_until.FromSeconds(int(now + 3600))
            admin.PutWarrant(warrant, timeout=DEADLINE)
        responder = kms_pb2.TARGET_ROLE_RESPONDER
        request = kms_pb2.GetKeysRequest(target_identity=BOB, target_role=responder,
                                         liid="LI-0001", transfer_init=offer,
                                         transfer_resp=answer, correlation_id="c-1")  # fmt: skip
        print("== DF2: GetKeys on node-3")
        got = kms_pb2_grpc.XkServiceStub(three.channel("li", "df2")).GetKeys(
            request, timeout=DEADLINE
        )
        released = [s.session_key for s in got.sessions] == [k.tek for k in keys]
        print("  node-3 released bob's keys" if released else "  !! other keys")
        seen: queue.SimpleQueue[Any] = queue.SimpleQueue()
        watch = _watch(one, seen)
        print("== forged on node-3 (bob's call as alice's); a watcher on node-1")
        forged = kms_pb2.GetKeysRequest(target_identity=ALICE, target_role=responder,
                                        liid="LI-0002", transfer_init=offer,
                                        correlation_id="c-2")  # fmt: skip
        try:
            kms_pb2_grpc.XkServiceStub(three.channel("li", "df2")).GetKeys(forged, timeout=20)
            refused = False
        except grpc.RpcError as err:
            refused = True
            print(f"  refused: {err.code().name}: {err.details()}")
        alarm = seen.get(timeout=DEADLINE)
        print(f"  node-1 watcher: ALARM {alarm.reason} liid={alarm.liid} caller={alarm.caller}")
        watch.cancel()
        print("== node-2 killed (SIGKILL); node-1 releases the call's keys")
        two.stop(signal.SIGKILL)
        again = kms_pb2_grpc.XkServiceStub(one.channel("li", "df2")).GetKeys(
            request, timeout=DEADLINE
        )
        survived = [s.session_key for s in again.sessions] == [k.tek for k in keys]
        print("  released" if survived else "  !! other keys")
        for node in (one, three):
            node.stop()
        print("== every node's audit chain (in PostgreSQL), verified from node-1's config")
        out = subprocess.run(
            [sys.executable, "-m", "firmware.cli", "audit", "verify", "--config",
             str(one.config)],
            capture_output=True, text=True, env=_env(), check=False,
        )  # fmt: skip
        for line in (out.stdout or out.stderr).strip().splitlines():
            print(f"  {line}")
        verified = out.returncode == 0
        ok = released and refused and alarm.correlation_id == "c-2" and survived and verified
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.stop()
        pg.close()
    print("== cluster demo " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
