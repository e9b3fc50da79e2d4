"""A real node in-process: real gRPC servers over real TLS on loopback, the session's SoftHSM
token, a SQLite store in a temp dir, and an injectable clock."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.config import Config, load
from firmware.devpki import make_dev_pki
from firmware.node import Node
from firmware.store.sqlite import SqliteStore
from hsm.softhsm import SoftHsmToken
from hsm.vault import Pkcs11Vault, VaultSettings
from tests.calls import ALICE, ALICE_PSK, BOB, BOB_PSK
from tests.core.fakes import OPERATOR

START = 1_900_000_000.0

CONFIG = """
[node]
kms_identity = "sip:kms.ims.example.net"
data_dir = "data"
workers = {workers}

[hsm]
token_uri = "pkcs11:token={label}"
pin_file = "{pin_file}"

[ue_listener]
host = "127.0.0.1"
port = 0
cert = "pki/server.pem"
key = "pki/server.key"
{listener_extra}

[li_listener]
host = "127.0.0.1"
port = 0
cert = "pki/li-server.pem"
key = "pki/li-server.key"
client_ca = "pki/li-ca.pem"
{listener_extra}

[roles]
{roles}

[policy]
key_forking = {forking}
"""


ROLES = 'df2 = ["dns:df2.li.example.net"]\nadmin = ["dns:admin.li.example.net"]'


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class RunningNode:
    node: Node
    cfg: Config
    clock: Clock
    pki: Path
    store: SqliteStore

    def channel(self, listener: str = "ue", client: str | None = None) -> grpc.Channel:
        port = self.node.ue_port if listener == "ue" else self.node.li_port
        ca = (self.pki / "ca.pem").read_bytes()
        if client is None:
            creds = grpc.ssl_channel_credentials(ca)
        else:
            creds = grpc.ssl_channel_credentials(
                ca,
                (self.pki / f"{client}.key").read_bytes(),
                (self.pki / f"{client}.pem").read_bytes(),
            )
        return grpc.secure_channel(f"localhost:{port}", creds)

    def exchanger(self) -> tuple[grpc.Channel, kms_pb2_grpc.TicketServiceStub]:
        ch = self.channel()
        return ch, kms_pb2_grpc.TicketServiceStub(ch)


def start_node(
    tmp_path: Path,
    token: SoftHsmToken,
    settings: VaultSettings,
    forking: bool = True,
    extra_config: str = "",
    extra_users: tuple[tuple[str, bytes], ...] = (),
    roles: str = ROLES,
    listener_extra: str = "",
    workers: int = 8,
) -> RunningNode:
    """A node in `tmp_path` with users alice (alias tel:+15550100) and bob, plus `extra_users`;
    `extra_config` is appended to the TOML config, `roles` is the body of its [roles],
    `listener_extra` is added to both listener sections (limits)."""
    pki = tmp_path / "pki"
    make_dev_pki(pki)
    path = tmp_path / "kmsnode.toml"
    path.write_text(
        CONFIG.format(
            label=token.label,
            pin_file=token.pin_file,
            forking="true" if forking else "false",
            roles=roles,
            listener_extra=listener_extra,
            workers=workers,
        )
        + extra_config
    )
    cfg = load(path)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    vault = Pkcs11Vault.open(settings, monitor=False)
    store = SqliteStore(cfg.state_db)
    node = Node.start(cfg, vault=vault, store=store, clock=clock)
    node.admin.put_user(OPERATOR, ALICE, ["tel:+15550100"], ALICE_PSK, b"")
    node.admin.put_user(OPERATOR, BOB, [], BOB_PSK, b"")
    for identity, psk in extra_users:
        node.admin.put_user(OPERATOR, identity, [], psk, b"")
    return RunningNode(node, cfg, clock, pki, store)


@pytest.fixture
def running(
    tmp_path: Path, softhsm_token: SoftHsmToken, vault_settings: VaultSettings, _vault_keys: None
) -> Iterator[RunningNode]:
    rn = start_node(tmp_path, softhsm_token, vault_settings)
    try:
        yield rn
    finally:
        rn.node.stop(1.0)


def exchange_via(stub: kms_pb2_grpc.TicketServiceStub):  # type: ignore[no-untyped-def]
    def call(data: bytes) -> bytes:
        return bytes(stub.Exchange(kms_pb2.MikeyMessage(data=data), timeout=10).data)

    return call
