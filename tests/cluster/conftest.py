"""A cluster for tests: a throw-away PostgreSQL (its own server, so outage tests stop only it),
one dev node folder (`kmsnode dev-init`: SoftHSM token, dev PKI), and N `kmsnode serve`
processes that share the database and the token, each with its own node id, data folder and
ports (loopback, chosen at bind). Users are provisioned once, through node 1's AdminService:
every node sees them at once.

Rules: every wait is bounded (process output lines, gRPC deadlines); processes are stopped with
SIGTERM (SIGKILL after a bounded wait) at the end, also when a test failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from tests.calls import ALICE, ALICE_PSK, BOB, BOB_PSK
from tests.pg import PgServer

DEADLINE = 20.0


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}


@dataclass
class Member:
    name: str
    config: Path
    proc: subprocess.Popen[str] | None = None
    ue: int = 0
    li: int = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "firmware.cli", "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        )  # fmt: skip
        assert self.proc.stdout is not None
        first, second = self.proc.stdout.readline(), self.proc.stdout.readline()
        if not first.startswith("UE listener on"):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"{self.name} did not start: {first}{second}{err[-3000:]}")
        self.ue = int(first.rsplit(":", 1)[1])
        self.li = int(second.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


@dataclass
class Cluster:
    root: Path
    pg: PgServer
    url: str
    members: list[Member] = field(default_factory=list)
    _channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    def channel(
        self, member: Member, listener: str = "ue", client: str | None = None
    ) -> grpc.Channel:
        ca = (self.pki / "ca.pem").read_bytes()
        port = member.ue if listener == "ue" else member.li
        if client is None:
            creds = grpc.ssl_channel_credentials(ca)
        else:
            creds = grpc.ssl_channel_credentials(
                ca,
                (self.pki / f"{client}.key").read_bytes(),
                (self.pki / f"{client}.pem").read_bytes(),
            )
        channel = grpc.secure_channel(f"localhost:{port}", creds)
        self._channels.append(channel)
        return channel

    def exchange(self, member: Member):  # type: ignore[no-untyped-def]
        stub = kms_pb2_grpc.TicketServiceStub(self.channel(member))

        def call(data: bytes) -> bytes:
            return bytes(stub.Exchange(kms_pb2.MikeyMessage(data=data), timeout=DEADLINE).data)

        return call

    def admin(self, member: Member) -> kms_pb2_grpc.AdminServiceStub:
        return kms_pb2_grpc.AdminServiceStub(self.channel(member, "li", "admin"))

    def xk(self, member: Member) -> kms_pb2_grpc.XkServiceStub:
        return kms_pb2_grpc.XkServiceStub(self.channel(member, "li", "df2"))

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        for member in self.members:
            member.stop()


def _config(root: Path, name: str, url: str) -> Path:
    """Node `name`'s config: the dev config of `root` with its own data folder and node id,
    ports chosen at bind, the shared PostgreSQL store."""
    text = (root / "kmsnode.toml").read_text()
    text = text.replace('data_dir = "."', f'data_dir = "{name}"\nnode_id = "{name}"', 1)
    text += f'\n[store]\nurl = "{url}"\n'
    path = root / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    done = subprocess.run(
        [sys.executable, "-m", "firmware.cli", "dev-init", str(root),
         "--ue-port", "0", "--li-port", "0", "--metrics-port", "0"],
        capture_output=True, text=True, env=_env(), timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pg = PgServer()
    try:
        url = pg.url(pg.database())
        c = Cluster(root, pg, url)
        try:
            for name in ("node-1", "node-2", "node-3"):
                member = Member(name, _config(root, name, url))
                member.start()
                c.members.append(member)
            admin = c.admin(c.members[0])
            for identity, psk in ((ALICE, ALICE_PSK), (BOB, BOB_PSK)):
                admin.PutUser(kms_pb2.PutUserRequest(identity=identity, psk=psk), timeout=DEADLINE)
            yield c
        finally:
            c.close()
    finally:
        pg.close()
