"""The `kmsnode` command end to end in subprocesses: dev-init, users, keys, serve and SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def test_dev_init_keeps_no_ca_key_in_the_nodes_pki_and_two_cas(devnode: Path) -> None:
    """The node's pki/ holds only certificates and its own and the client pairs' keys; the CA
    keys live in dev-ca/ beside it. UE certificates come from another CA than LI ones."""
    from cryptography import x509

    pki = devnode / "pki"
    for path in pki.iterdir():
        if path.suffix == ".key":
            assert path.stem in ("server", "li-server", "df2", "admin", "ue", "x1"), path
        assert path.stat().st_mode & 0o077 == 0 or path.suffix == ".pem"
    assert sorted(p.name for p in (devnode / "dev-ca").iterdir()) == ["li-ca.key", "ue-ca.key"]

    def issuer(name: str) -> x509.Name:
        return x509.load_pem_x509_certificate((pki / name).read_bytes()).issuer

    assert issuer("ue.pem") == issuer("server.pem") != issuer("df2.pem")
    assert issuer("df2.pem") == issuer("admin.pem") == issuer("li-server.pem")
    config = (devnode / "kmsnode.toml").read_text()
    assert 'client_ca = "pki/li-ca.pem"' in config
    assert 'df2 = ["dns:df2.li.example.net"]' in config


def _serve(devnode: Path) -> tuple[subprocess.Popen[str], int, int]:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware.cli", "serve", "--config", str(devnode / "kmsnode.toml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    ue = int(proc.stdout.readline().rsplit(":", 1)[1])
    li = int(proc.stdout.readline().rsplit(":", 1)[1])
    return proc, ue, li


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_never_dumps_core_and_creates_private_files(devnode: Path) -> None:
    proc, _, _ = _serve(devnode)
    try:
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
        assert core.split()[4:6] == ["0", "0"]
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert "Umask:\t0077" in status
        runtime = devnode / "listeners.json"
        assert runtime.stat().st_mode & 0o077 == 0
    finally:
        _stop(proc)


def test_the_process_hardening_makes_the_process_undumpable() -> None:
    out = subprocess.run(
        [sys.executable, "-c",
         "from firmware.process import harden, dumpable; import resource as r;"
         "print(dumpable()); harden(); print(dumpable(), r.getrlimit(r.RLIMIT_CORE))"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert out.stdout.split("\n")[:2] == ["True", "False (0, 0)"]


def _readline_until(stream: Any, needle: str, limit: int = 200) -> str:
    """Read lines (each read bounded by the process writing them) until one holds `needle`."""
    for _ in range(limit):
        line = stream.readline()
        if not line:
            break
        if needle in line:
            return str(line)
    raise AssertionError(f"{needle!r} not logged")


def test_a_revoked_df2_certificate_is_refused_after_sighup_without_restart(
    devnode: Path,
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc

    pki = devnode / "pki"
    config = devnode / "kmsnode.toml"
    original = config.read_text()
    cert = x509.load_pem_x509_certificate((pki / "df2.pem").read_bytes())
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    proc, _, li = _serve(devnode)

    def reason() -> str:
        creds = grpc.ssl_channel_credentials(
            (pki / "ca.pem").read_bytes(),
            (pki / "df2.key").read_bytes(),
            (pki / "df2.pem").read_bytes(),
        )
        with grpc.secure_channel(f"localhost:{li}", creds) as ch:
            try:
                kms_pb2_grpc.XkServiceStub(ch).GetKeys(
                    kms_pb2.GetKeysRequest(
                        target_identity="sip:bob@ims.example.net", target_role=2,
                        transfer_init=b"x", liid="none",
                    ),
                    timeout=20,
                )  # fmt: skip
            except grpc.RpcError as err:
                status = rpc_status.from_call(err)
                assert status is not None
                info = error_details_pb2.ErrorInfo()
                status.details[0].Unpack(info)
                return str(info.reason)
        return "OK"

    try:
        assert reason() == "NO_ACTIVE_WARRANT"  # holds the DF2 role
        config.write_text(
            original.replace("[roles]\n", f'[roles]\nrevoked = ["sha256:{fingerprint}"]\n')
        )
        proc.send_signal(signal.SIGHUP)
        _readline_until(proc.stderr, "roles reloaded")
        assert reason() == "ROLE_NOT_ALLOWED"
        assert proc.poll() is None  # the same process: no restart
    finally:
        config.write_text(original)
        _stop(proc)


def test_init_keys_is_idempotent_and_makes_no_new_version(devnode: Path) -> None:
    config = str(devnode / "kmsnode.toml")
    before = kmsnode("keys", "list", "--config", config).stdout
    out = kmsnode("init-keys", "--config", config)
    assert out.stdout.strip() == "keys ready in the token"
    assert kmsnode("keys", "list", "--config", config).stdout == before


def test_dev_init_turns_on_mikey_over_https_and_x1(devnode: Path) -> None:
    from firmware.config import load

    cfg = load(devnode / "kmsnode.toml")
    assert cfg.ue_http.enabled and cfg.x1.enabled
    assert cfg.roles.members["x1"] == ("dns:admf.li.example.net",)
    assert cfg.clients.x1_cert == devnode / "pki" / "x1.pem"
