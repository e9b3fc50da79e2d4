"""`[node] processes = 2`: two worker processes share the listeners (SO_REUSEPORT) and one
PostgreSQL, a supervisor restarts a worker that dies and stops all on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from tests.calls import ALICE, ALICE_PSK
from tests.cluster.conftest import DEADLINE, Cluster, _env
from tests.core.world import Ues

pytestmark = pytest.mark.softhsm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pids(stream: Any, wanted: set[int], limit: int = 400) -> dict[int, int]:
    """Worker index -> pid from the supervisor's "worker I started (pid P)" lines (bounded)."""
    found: dict[int, int] = {}
    for _ in range(limit):
        line = stream.readline()
        if not line:
            break
        if " started (pid " in line and "worker " in line:
            index = int(line.split("worker ", 1)[1].split(" ", 1)[0])
            found[index] = int(line.rsplit("pid ", 1)[1].rstrip(")\n"))
            if wanted <= set(found):
                return found
    raise AssertionError(f"workers {wanted} not started: {found}")


def test_two_workers_share_the_listeners_and_a_dead_one_is_restarted(
    cluster: Cluster, tmp_path: Path
) -> None:
    url = cluster.pg.url(cluster.pg.database())
    ue, li = _free_port(), _free_port()
    text = (cluster.root / "kmsnode.toml").read_text()
    text = text.replace('data_dir = "."', 'data_dir = "multi"\nnode_id = "multi"\nprocesses = 2', 1)
    text = text.replace("port = 0\n", f"port = {ue}\n", 1).replace(
        "port = 0\n", f"port = {li}\n", 1
    )
    text = text.replace("enabled = true", "enabled = false")  # dev-init's HTTPS listeners: port 0
    config = cluster.root / "multi.toml"
    config.write_text(text + f'\n[store]\nurl = "{url}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().strip() == f"UE listener on 127.0.0.1:{ue}"
        assert proc.stdout.readline().strip() == f"LI listener on 127.0.0.1:{li}"
        pids = _pids(proc.stderr, {1, 2})
        data = cluster.root / "multi"
        with psycopg.connect(url) as conn:  # each worker is its own audit chain
            rows = conn.execute("SELECT DISTINCT chain FROM audit_records ORDER BY 1").fetchall()
        assert rows == [("multi-w1",), ("multi-w2",)]
        assert not (data / "audit-w1.log").exists()
        ca = (cluster.pki / "ca.pem").read_bytes()

        def serving() -> bool:
            opts = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.secure_channel(f"localhost:{ue}", grpc.ssl_channel_credentials(ca),
                                     options=opts) as ch:  # fmt: skip
                status = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=DEADLINE
                )
                return bool(status.status == health_pb2.HealthCheckResponse.SERVING)

        assert all(serving() for _ in range(6))  # new connections, spread by the kernel
        os.kill(pids[1], signal.SIGKILL)
        again = _pids(proc.stderr, {1})
        assert again[1] != pids[1]
        read = {n: (cluster.pki / n).read_bytes() for n in ("admin.key", "admin.pem")}
        admin_creds = grpc.ssl_channel_credentials(ca, read["admin.key"], read["admin.pem"])
        with grpc.secure_channel(f"localhost:{li}", admin_creds) as ch:
            kms_pb2_grpc.AdminServiceStub(ch).PutUser(
                kms_pb2.PutUserRequest(identity=ALICE, psk=ALICE_PSK), timeout=DEADLINE
            )
        with grpc.secure_channel(f"localhost:{ue}", grpc.ssl_channel_credentials(ca)) as ch:
            stub = kms_pb2_grpc.TicketServiceStub(ch)
            now = time.time()
            offer = Ues(
                lambda d: bytes(stub.Exchange(kms_pb2.MikeyMessage(data=d), timeout=DEADLINE).data),
                lambda: now,
            ).offer(forking=False)
            assert offer.transfer_init
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        for pid in (pids[2], again[1]):
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_processes_above_one_are_refused_with_sqlite(tmp_path: Path, cluster: Cluster) -> None:
    text = (cluster.root / "kmsnode.toml").read_text()
    text = text.replace('data_dir = "."', 'data_dir = "."\nprocesses = 2', 1)
    config = tmp_path / "k.toml"
    config.write_text(text.replace('"softhsm/', f'"{cluster.root}/softhsm/').replace(
        '"pki/', f'"{cluster.root}/pki/'))  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "firmware.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, env=_env(), timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2 and "PostgreSQL" in out.stderr and "Traceback" not in out.stderr
