"""The `kmsnode` command end to end in subprocesses: dev-init, users, keys, serve and SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.softhsm


def kmsnode(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    out = subprocess.run(
        [sys.executable, "-m", "firmware.cli", *args],
        capture_output=True, text=True, check=False, env=env, timeout=120,
    )  # fmt: skip
    if check:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def devnode(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dev")
    kmsnode("dev-init", str(directory), "--ue-port", "0", "--li-port", "0")
    return directory


def test_dev_init_is_idempotent_and_writes_the_pki(devnode: Path) -> None:
    before = (devnode / "pki" / "server.pem").read_bytes()
    kmsnode("dev-init", str(devnode))
    assert (devnode / "pki" / "server.pem").read_bytes() == before
    for name in ("ca.pem", "server.key", "df2.pem", "df2.key", "admin.pem", "ue.pem", "ue.key"):
        assert (devnode / "pki" / name).exists()
    assert (devnode / "pki" / "server.key").stat().st_mode & 0o077 == 0
    listing = kmsnode("keys", "list", "--config", str(devnode / "kmsnode.toml")).stdout
    assert "ticket-protection/v1\tACTIVE" in listing


def test_user_add_list_remove(devnode: Path) -> None:
    config = str(devnode / "kmsnode.toml")
    out = kmsnode(
        "user", "add", "sip:Carol@IMS.example.net", "--alias", "tel:+1-555-7", "--config", config
    )
    psk = re.search(r"generated PSK \(shown once\): ([0-9a-f]{64})", out.stdout)
    assert psk is not None
    listing = kmsnode("user", "list", "--config", config).stdout
    assert "sip:Carol@ims.example.net\taliases=tel:+15557" in listing
    assert psk.group(1) not in listing
    kmsnode("user", "remove", "sip:Carol@ims.example.net", "--config", config)
    missing = kmsnode(
        "user", "remove", "sip:Carol@ims.example.net", "--config", config, check=False
    )
    assert missing.returncode == 1 and "no such user" in missing.stderr


def test_a_bad_config_is_refused_with_its_setting_named(tmp_path: Path) -> None:
    bad = tmp_path / "k.toml"
    bad.write_text(
        '[node]\nkms_identity = "sip:kms.x"\n[hsm]\ntoken_uri = "pkcs11:token=x"\npin = "1"\n'
    )
    out = kmsnode("serve", "--config", str(bad), check=False)
    assert out.returncode == 2 and "PIN" in out.stderr and "Traceback" not in out.stderr


def test_serve_reports_its_listeners_serves_health_and_exits_0_on_sigterm(devnode: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware.cli", "serve", "--config", str(devnode / "kmsnode.toml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines[0].startswith("UE listener on 127.0.0.1:")
        assert lines[1].startswith("LI listener on 127.0.0.1:")
        port = int(lines[0].rsplit(":", 1)[1])
        ca = (devnode / "pki" / "ca.pem").read_bytes()
        with grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca)) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        # While the node runs, key rotation goes through it (AdminService), not behind its back.
        config = str(devnode / "kmsnode.toml")
        before = kmsnode("keys", "list", "--config", config).stdout
        rotated = kmsnode("keys", "rotate", "--config", config).stdout
        version = re.search(r"ticket-protection/v(\d+) ACTIVE", rotated)
        assert version is not None
        after = kmsnode("keys", "list", "--config", config).stdout
        assert f"ticket-protection/v{version.group(1)}\tACTIVE" in after
        assert f"ticket-protection/v{version.group(1)}\t" not in before
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
