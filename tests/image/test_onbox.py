"""On-box verbs without a VM: token initialisation, PIN sealing, provisioning, firewall rules.

The token test uses a real SoftHSM token; the rest run the real code with the service-user and
systemd-creds calls replaced by recorders (unit tests of logic).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from image import appliance
from image.appliance import Layout
from image.errors import TargetRefused

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
REPO = Path(__file__).resolve().parents[2]


def test_token_is_initialised_with_pins_on_standard_input_only(tmp_path: Path) -> None:
    import pkcs11

    if not Path(MODULE).exists():
        pytest.skip("softhsm2 not installed")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path}/tokens\nobjectstore.backend = file\n")
    pin = "user-" + os.urandom(6).hex()
    argv = [sys.executable, "-m", "image", "token-init", "--module", MODULE, "--label", "t1"]
    proc = subprocess.run(
        argv,
        input=f"so-{os.urandom(6).hex()}\n{pin}\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    )
    assert proc.returncode == 0, proc.stderr
    assert all(pin not in a for a in argv)
    probe = (
        "import pkcs11,sys; t=pkcs11.lib(sys.argv[1]).get_token(token_label='t1'); "
        "t.open(user_pin=sys.argv[2]).close(); print('login ok')"
    )
    login = subprocess.run(
        [sys.executable, "-c", probe, MODULE, pin],
        capture_output=True,
        text=True,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    )
    assert "login ok" in login.stdout, login.stderr
    assert pkcs11 is not None


def test_first_boot_passes_pins_to_no_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[list[str], str | None]] = []

    def as_user(cmd: list[str], env: dict[str, str], stdin: str | None = None) -> None:
        calls.append((cmd, stdin))

    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append((cmd, kw.get("input")))
        Path(cmd[-1]).write_text("sealed")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(appliance, "_as_user", as_user)
    monkeypatch.setattr(appliance, "_chown", lambda p: None)
    monkeypatch.setattr(appliance.subprocess, "run", run)
    layout = Layout(tmp_path / "state", tmp_path / "lib")
    (layout.node).mkdir(parents=True)
    pin = "pin-" + os.urandom(6).hex()
    appliance.init_token(layout, pin)
    (layout.credential.parent).mkdir()
    appliance.seal_pin(pin, layout.credential, insecure=False)
    assert len(calls) == 2
    for cmd, stdin in calls:
        assert all(pin not in a for a in cmd)
        assert stdin is not None and pin in stdin
    seal = calls[1][0]
    assert "--with-key=tpm2" in seal and "--tpm2-pcrs=7+12" in seal


def test_an_insecure_image_seals_the_pin_with_a_host_key_only_when_built_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        Path(cmd[-1]).write_text("sealed")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(appliance.subprocess, "run", run)
    lib = tmp_path / "lib"
    lib.mkdir()
    assert not Layout(tmp_path, lib).insecure
    (lib / "insecure-no-tpm").write_text("x")
    assert Layout(tmp_path, lib).insecure
    appliance.seal_pin("p", tmp_path / "c", insecure=True)
    assert "--with-key=host" in seen[0] and not any("tpm2" in a for a in seen[0])


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Layout:
    monkeypatch.setattr(appliance, "_chown", lambda p: None)
    layout = Layout(tmp_path / "state", tmp_path / "lib")
    layout.pki.mkdir(parents=True)
    appliance.make_csr(layout.pki / "server.key", layout.pki / "server.csr", None)
    return layout


def operator_chain(layout: Layout) -> tuple[bytes, bytes]:
    from tests.image.test_appliance import make_operator

    op = make_operator()
    return op.sign((layout.pki / "server.csr").read_bytes()), op.ca_pem


ROLES = '[node]\nkms_identity = "sip:kms.example.net"\n[roles]\ndf2 = ["dns:df2.example.net"]\n'


def test_provisioning_writes_a_config_the_node_accepts(node: Layout) -> None:
    from firmware import config as config_mod

    chain, ca = operator_chain(node)
    appliance.provision(chain, ca, ROLES, node)
    cfg = config_mod.load(node.config)
    assert cfg.kms_identity == "sip:kms.example.net"
    assert cfg.roles.members["df2"] == ("dns:df2.example.net",)
    assert cfg.hsm.pin_credential == "hsm-pin" and cfg.hsm.pin_file is None
    assert (cfg.ue_listener.port, cfg.li_listener.port) == (7443, 7444)
    assert appliance.listener_ports(node.config) == [7443, 7444]
    assert cfg.policy.require_clock_sync  # never serves on an unsynchronised clock
    assert not cfg.ue_http.enabled and not cfg.x1.enabled  # no listener the firewall keeps shut


def test_the_operator_cannot_let_the_appliance_serve_on_an_unsynchronised_clock(
    node: Layout,
) -> None:
    from firmware import config as config_mod

    chain, ca = operator_chain(node)
    with pytest.raises(TargetRefused, match="require_clock_sync is fixed"):
        appliance.provision(chain, ca, ROLES + "[policy]\nrequire_clock_sync = false\n", node)
    assert not node.config.exists()
    appliance.provision(chain, ca, ROLES + "[policy]\nclock_skew = 5\n", node)
    cfg = config_mod.load(node.config)
    assert cfg.policy.require_clock_sync and cfg.policy.clock_skew == 5


def test_provisioning_refuses_a_chain_for_another_key(node: Layout, tmp_path: Path) -> None:
    other = Layout(tmp_path / "other", tmp_path / "lib")
    other.pki.mkdir(parents=True)
    appliance.make_csr(other.pki / "server.key", other.pki / "server.csr", None)
    chain, ca = operator_chain(other)
    with pytest.raises(TargetRefused, match="not for this node's key"):
        appliance.provision(chain, ca, ROLES, node)
    assert not node.config.exists()


@pytest.mark.parametrize(
    "roles",
    [
        ROLES + '[hsm]\nmodule = "/tmp/evil.so"\n',
        '[node]\nkms_identity = "sip:kms.example.net"\ndata_dir = "/"\n',
        "[roles]\ndf2 = []\n",
        '[node]\nkms_identity = "not a sip uri"\n',
    ],
    ids=["hsm-section", "data-dir", "no-identity", "bad-identity"],
)
def test_provisioning_refuses_role_files_that_reach_beyond_identity_roles_and_policy(
    node: Layout, roles: str
) -> None:
    chain, ca = operator_chain(node)
    with pytest.raises(TargetRefused):
        appliance.provision(chain, ca, roles, node)
    assert not node.config.exists()


def test_the_csr_carries_the_nodes_own_key(node: Layout) -> None:
    csr = x509.load_pem_x509_csr((node.pki / "server.csr").read_bytes())
    key = serialization.load_pem_private_key((node.pki / "server.key").read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert csr.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)
    assert oct((node.pki / "server.key").stat().st_mode & 0o777) == "0o600"


def test_firewall_opens_only_the_configured_listeners(node: Layout) -> None:
    closed = appliance.ruleset(appliance.listener_ports(node.config))
    assert "policy drop" in closed and "tcp dport" not in closed
    chain, ca = operator_chain(node)
    appliance.provision(chain, ca, ROLES, node)
    rules = appliance.ruleset(appliance.listener_ports(node.config))
    assert "tcp dport { 7443, 7444 } accept" in rules
    assert rules.count("tcp dport") == 1 and "9464" not in rules  # metrics stay on loopback


STATE_SCRIPT = REPO / "image/recipe/kmsnode-state"


def run_state_script(
    tmp_path: Path, has_tpm: bool, insecure: bool
) -> subprocess.CompletedProcess[str]:
    """Run the first-boot state script against a file, with the TPM probe and mounts stubbed."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name, body in {
        "systemd-creds": f"exit {0 if has_tpm else 1}",
        "mount": "exit 0",
        "mountpoint": "exit 1",
        "install": "exit 0",
        "cryptsetup": 'echo cryptsetup "$@" >> "$LOG"; exit 1',
        "systemd-cryptenroll": 'echo cryptenroll >> "$LOG"; exit 0',
    }.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    dev = tmp_path / "state.img"
    if not dev.exists():
        dev.write_bytes(b"\x00" * (8 << 20))
    marker = tmp_path / "insecure-no-tpm"
    if insecure:
        marker.write_text("x")
    return subprocess.run(
        ["sh", str(STATE_SCRIPT)],
        capture_output=True,
        text=True,
        env={
            "PATH": f"{stubs}:/usr/sbin:/usr/bin:/sbin:/bin",
            "LOG": str(tmp_path / "log"),
            "KMSNODE_STATE_DEV": str(dev),
            "KMSNODE_STATE_DIR": str(tmp_path / "mnt"),
            "KMSNODE_INSECURE_MARKER": str(marker),
        },
    )


def test_without_a_tpm_the_state_is_refused_and_the_disk_untouched(tmp_path: Path) -> None:
    proc = run_state_script(tmp_path, has_tpm=False, insecure=False)
    assert proc.returncode != 0
    assert "no usable TPM 2.0: refusing" in proc.stderr
    assert set((tmp_path / "state.img").read_bytes()) == {0}
    assert not (tmp_path / "log").exists()  # nothing was formatted or enrolled


def test_an_insecure_build_says_so_loudly_and_never_pretends_to_seal(tmp_path: Path) -> None:
    import shutil

    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 not installed")
    proc = run_state_script(tmp_path, has_tpm=False, insecure=True)
    assert proc.returncode == 0, proc.stderr
    assert "INSECURE IMAGE (built with --insecure-no-tpm)" in proc.stderr
    assert "NOT encrypted" in proc.stderr
    assert not (tmp_path / "log").exists()  # no LUKS, no TPM enrolment attempted


def first_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str) -> Layout:
    monkeypatch.setattr(appliance, "_chown", lambda p: None)
    monkeypatch.setattr(appliance, "init_token", lambda layout, pin: layout.node / "conf")
    monkeypatch.setattr(appliance, "seal_pin", lambda pin, out, insecure: out.write_text("x"))
    monkeypatch.setattr(appliance, "_make_keys", lambda layout, conf, pin: None)
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "variant").write_text(variant + "\n")
    layout = Layout(tmp_path / "state", lib)
    layout.state.mkdir()
    appliance.node_init(layout)
    return layout


def test_a_production_first_boot_shows_a_csr_and_makes_no_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = first_boot(tmp_path, monkeypatch, "production")
    out = capsys.readouterr().out
    assert "KMSNODE-CSR-BEGIN\n-----BEGIN CERTIFICATE REQUEST-----" in out
    assert not layout.config.exists() and not (layout.state / "dev-ca").exists()
    keys = [p for p in layout.state.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    assert keys == [layout.pki / "server.key"]


def test_only_the_test_image_provisions_itself_and_keeps_its_ca_out_of_pki(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = first_boot(tmp_path, monkeypatch, "test")
    assert layout.config.exists()
    assert (layout.state / "dev-ca/ca.key").exists()
    assert not any(
        b"PRIVATE KEY" in p.read_bytes() for p in layout.pki.iterdir() if p.name != "server.key"
    )
