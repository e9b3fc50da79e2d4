"""A throw-away KMS node for a test session: `kmsnode dev-node --json` as a child process, with
typed accessors for what it hands out and gRPC clients over its real TLS.

Rules:
- The node runs in its own process (SoftHSM is loaded there, never in the test process, so a
  project's own SoftHSM use is not disturbed); it is started with this interpreter (`-P -m
  firmware.cli`, so a `firmware/` folder in the working directory is never imported instead of
  the installed package) from `workdir`, and its log goes to `workdir/dev-node.log`.
- Every wait is bounded: the ready line is read with a deadline (select, no sleeping), RPCs carry
  deadlines, stop waits `STOP_TIMEOUT` and then kills.
- `stop` fails loudly when the node did not exit 0 or left its directory behind; a node it had
  to kill has its directory removed here.
- The process is told its parent's pid ($KMSNODE_DEV_NODE_PARENT) and stops when this process
  (its parent thread) ends, even on SIGKILL, through PR_SET_PDEATHSIG (firmware/devnode.py).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from firmware.api.proto.kms.v1 import kms_pb2_grpc
from kmsnode_pytest.alarms import AlarmWatcher
from kmsnode_pytest.calls import User, UserPair

START_TIMEOUT = 120.0  # SoftHSM token, dev PKI, keys, two TLS servers, two users (about 3 s)
STOP_TIMEOUT = 30.0
RPC_TIMEOUT = 30.0
_CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]  # loopback: never through a CI proxy


class NodeError(RuntimeError):
    """The node did not start, did not stop cleanly, or left something behind."""


@dataclass(frozen=True)
class ClientCredentials:
    """A client certificate of the dev PKI: the role it holds and its certificate identity (the
    typed SAN the node's [roles] and warrants name, e.g. "dns:df2.li.example.net")."""

    role: str
    cert: Path
    key: Path
    identity: str


@dataclass
class KmsNode:
    """A running node (`start`) and clients for it; `stop` ends it."""

    process: subprocess.Popen[bytes]
    pid: int
    directory: Path
    config: Path
    kms_identity: str
    ue_address: str
    li_address: str
    metrics_address: str | None
    ca: Path
    clients: Mapping[str, ClientCredentials]
    users: tuple[User, ...]
    log: Path
    started_in: float  # seconds from spawn to ready (measured, for the curious)
    ue_http_address: str | None = None  # MIKEY over HTTPS (POST application/mikey to /mikey)
    x1_address: str | None = None  # ETSI X1 (mutual TLS 1.3 with client("x1"))
    _channels: dict[tuple[str, str | None], grpc.Channel] = field(default_factory=dict)

    # --- lifecycle ------------------------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path, timeout: float = START_TIMEOUT) -> KmsNode:
        """A node in `workdir/node` (removed when it stops); its log in `workdir/dev-node.log`."""
        from firmware.devnode import PARENT_ENV

        workdir.mkdir(parents=True, exist_ok=True)
        node_dir = workdir / "node"
        ours = not node_dir.exists()  # dev-node refuses a DIR with files: never remove those
        log = workdir / "dev-node.log"
        command = [sys.executable, "-P", "-m", "firmware.cli", "dev-node", "--json"]
        began = time.monotonic()
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [*command, "--dir", str(node_dir)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                cwd=workdir,
                env={**os.environ, PARENT_ENV: str(os.getpid())},
            )
        try:
            doc = json.loads(_ready_line(process, timeout, log))
        except BaseException:
            _end(process)
            if ours:
                shutil.rmtree(node_dir, ignore_errors=True)
            raise
        return cls.from_description(process, doc, log, time.monotonic() - began)

    @classmethod
    def from_description(
        cls, process: subprocess.Popen[bytes], doc: dict[str, Any], log: Path, took: float
    ) -> KmsNode:
        clients = {
            role: ClientCredentials(role, Path(c["cert"]), Path(c["key"]), c["identity"])
            for role, c in doc["clients"].items()
        }
        users = tuple(User(u["identity"], bytes.fromhex(u["psk"])) for u in doc["users"])
        return cls(
            process,
            int(doc["pid"]),
            Path(doc["directory"]),
            Path(doc["config"]),
            doc["kms_identity"],
            doc["ue_listener"],
            doc["li_listener"],
            doc.get("metrics"),
            Path(doc["ca"]),
            clients,
            users,
            log,
            took,
            doc.get("ue_http_listener"),
            doc.get("x1_listener"),
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait (bounded), then check the node exited 0 and removed its directory."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            shutil.rmtree(self.directory, ignore_errors=True)
            raise NodeError(f"the node did not stop within {timeout:.0f} s; killed") from None
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()
        if code != 0:
            raise NodeError(f"the node exited with {code}: {_tail(self.log)}")
        if self.directory.exists():
            raise NodeError(f"the node left {self.directory} behind")

    # --- typed accessors ------------------------------------------------------------------

    def client(self, role: str) -> ClientCredentials:
        """The client certificate of `role`: "df2", "admin", "ue" or "x1" (the ADMF)."""
        try:
            return self.clients[role]
        except KeyError:
            raise KeyError(f"no client certificate for {role!r}: {sorted(self.clients)}") from None

    def user_pair(self) -> UserPair:
        """The two provisioned users: initiator (alice) and responder (bob)."""
        initiator, responder = self.users[:2]
        return UserPair(initiator, responder, self.kms_identity, self.ticket_service())

    def channel(self, listener: str = "li", role: str | None = None) -> grpc.Channel:
        """A TLS channel to the "ue" or "li" listener, verified with the node's CA; with the
        client certificate of `role` (the LI listener requires one). Kept until `stop`."""
        key = (listener, role)
        if key not in self._channels:
            address = {"ue": self.ue_address, "li": self.li_address}[listener]
            ca = self.ca.read_bytes()
            if role is None:
                creds = grpc.ssl_channel_credentials(ca)
            else:
                c = self.client(role)
                creds = grpc.ssl_channel_credentials(ca, c.key.read_bytes(), c.cert.read_bytes())
            self._channels[key] = grpc.secure_channel(address, creds, options=_CHANNEL_OPTIONS)
        return self._channels[key]

    def ticket_service(self) -> kms_pb2_grpc.TicketServiceStub:
        """TicketService on the UE listener (no client certificate: MIKEY authenticates)."""
        return kms_pb2_grpc.TicketServiceStub(self.channel("ue"))

    def xk_service(self, role: str = "df2") -> kms_pb2_grpc.XkServiceStub:
        """XkService on the LI listener, with the client certificate of `role`."""
        return kms_pb2_grpc.XkServiceStub(self.channel("li", role))

    def admin_service(self, role: str = "admin") -> kms_pb2_grpc.AdminServiceStub:
        """AdminService on the LI listener, with the client certificate of `role`."""
        return kms_pb2_grpc.AdminServiceStub(self.channel("li", role))

    def health(self, listener: str = "ue", timeout: float = RPC_TIMEOUT) -> bool:
        """Whether `listener` answers the gRPC health Check with SERVING."""
        role = None if listener == "ue" else "admin"
        answer = health_pb2_grpc.HealthStub(self.channel(listener, role)).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout
        )
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def watch_alarms(self, role: str = "admin") -> AlarmWatcher:
        """An alarm watcher, subscribed when this returns (ADMIN sees every alarm; a DF2 only
        its own requests' alarms and node alarms naming no LIID)."""
        return AlarmWatcher(self.channel("li", role))


def _ready_line(process: subprocess.Popen[bytes], timeout: float, log: Path) -> bytes:
    """The first stdout line of dev-node, within `timeout` (select on the pipe: no sleeping)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    end = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        ready, _, _ = select.select([fd], [], [], max(end - time.monotonic(), 0.0))
        if not ready:
            raise NodeError(f"the node was not ready within {timeout:.0f} s: {_tail(log)}")
        chunk = os.read(fd, 65536)
        if not chunk:
            code = process.wait(timeout=STOP_TIMEOUT)
            raise NodeError(f"the node exited with {code} before it was ready: {_tail(log)}")
        data += chunk
    return data.split(b"\n", 1)[0]


def _end(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT: the child is gone when this returns."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _tail(log: Path, lines: int = 20) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return f"last lines of {log}:\n" + "\n".join(text)
