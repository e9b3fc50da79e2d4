"""On-box verbs of the appliance: first-boot initialisation, provisioning, health gate, firewall.

Rules and invariants:
- Production images carry no CA key and no client key. First boot creates the HSM token (PINs
  through standard input into C_InitToken/C_InitPIN, never an argv), seals the user PIN as an
  encrypted systemd credential (TPM 2.0, PCR 7+12; `--with-key=host` only in an --insecure-no-tpm
  image), creates the node's keys in the token, and makes the node's TLS key pair and a CSR.
  The plaintext PIN exists only in memory, pipes and a root-only folder in /run, removed at once.
- The node gets a configuration only from `provision`: the operator's certificate chain (its
  leaf must match the node's own key), the LI client CA and a role file; fixed appliance settings
  (HSM, listeners, paths) are not the operator's to change; the result is checked by the node's
  own config loader before it replaces anything.
- The *test* image variant (VARIANT_ID=test) provisions itself from a throw-away CA it keeps in
  /var/lib/kmsnode/dev-ca; a production image never does.
- The health gate answers "good" only for SERVING from the UE listener over TLS, verified against
  the root of the node's own certificate chain.
"""

from __future__ import annotations

import datetime
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from image.certs import self_signed
from image.errors import ImageError, TargetRefused

STATE = Path("/var/lib/kmsnode")
LIB = Path("/usr/lib/kmsnode")
USER = "kmsnode"
TOKEN_LABEL = "kmsnode"  # noqa: S105 - a token label, not a secret
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
UE_PORT, LI_PORT, METRICS_PORT = 7443, 7444, 9464
PIN_CRED = "hsm-pin"
BOOT_COUNT_VAR = Path(
    "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
)
ROLE_SECTIONS = {"node": {"kms_identity"}, "roles": None, "policy": None}
# Settings of the appliance the operator's role file cannot change. A node whose clock is off
# beyond the skew decides replay and ticket validity wrongly: the appliance refuses to serve
# until systemd-timesyncd has synchronised the kernel clock (the node checks adjtimex).
FIXED_POLICY = {"require_clock_sync": True}


def say(text: str) -> None:
    print(f"kmsnode: {text}", flush=True)


@dataclass(frozen=True)
class Layout:
    state: Path = STATE
    lib: Path = LIB

    @property
    def node(self) -> Path:
        return self.state / "node"

    @property
    def pki(self) -> Path:
        return self.node / "pki"

    @property
    def config(self) -> Path:
        return self.node / "kmsnode.toml"

    @property
    def credential(self) -> Path:
        return self.state / "credentials" / f"{PIN_CRED}.cred"

    @property
    def variant(self) -> str:
        try:
            return (self.lib / "variant").read_text().strip()
        except OSError:
            return "production"

    @property
    def insecure(self) -> bool:
        return (self.lib / "insecure-no-tpm").exists()


def _credential(name: str) -> str | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    try:
        return (Path(directory) / name).read_text().strip() or None
    except OSError:
        return None


def _as_user(cmd: list[str], env: dict[str, str], stdin: str | None = None) -> None:
    proc = subprocess.run(
        [
            "setpriv",
            f"--reuid={USER}",
            f"--regid={USER}",
            "--init-groups",
            "--reset-env",
            "env",
            *(f"{k}={v}" for k, v in env.items()),
            *cmd,
        ],
        input=stdin,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ImageError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {proc.stderr[-400:]}")


def _chown(path: Path) -> None:
    """Hand `path` to the service user (when running as the service user, it already owns it)."""
    pw = pwd.getpwnam(USER)
    if os.geteuid() == pw.pw_uid:
        return
    os.chown(path, pw.pw_uid, pw.pw_gid)


def _write(path: Path, data: bytes, mode: int = 0o600, owner: bool = True) -> None:
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    if owner:
        _chown(tmp)
    os.replace(tmp, path)


def seal_pin(pin: str, out: Path, insecure: bool) -> None:
    """The PIN as an encrypted credential: TPM 2.0 bound to PCR 7+12 (host key if insecure)."""
    key = ["--with-key=host"] if insecure else ["--with-key=tpm2", "--tpm2-pcrs=7+12"]
    proc = subprocess.run(
        ["systemd-creds", "encrypt", *key, f"--name={PIN_CRED}", "-", str(out)],
        input=pin,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ImageError(f"systemd-creds encrypt failed: {proc.stderr.strip()[-300:]}")
    os.chmod(out, 0o600)


def init_token(layout: Layout, pin: str) -> Path:
    """An initialised SoftHSM token owned by the service user; PINs through standard input."""
    from hsm.softhsm import render_conf

    base = layout.node / "softhsm"
    tokens = base / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = base / "softhsm2.conf"
    conf.write_text(render_conf(tokens))
    for p in (base, tokens, conf):
        _chown(p)
    so_pin = secrets.token_hex(16)  # used once, never kept: the token is re-made, not repaired
    # PKCS#11 C_InitToken/C_InitPIN with the PINs on standard input (softhsm2-util would need
    # them on its argv or a terminal).
    _as_user(
        [
            sys.executable,
            "-m",
            "image",
            "token-init",
            "--module",
            SOFTHSM_MODULE,
            "--label",
            TOKEN_LABEL,
        ],
        {"SOFTHSM2_CONF": str(conf), "PYTHONDONTWRITEBYTECODE": "1"},
        stdin=f"{so_pin}\n{pin}\n",
    )
    return conf


def config_text(kms_identity: str, roles: dict[str, Any], policy: dict[str, Any]) -> str:
    """The appliance configuration: fixed settings plus the operator's identity, roles, policy."""
    lines = [
        "# kmsnode appliance configuration, written by `kmsnode-image provision`.",
        "[node]",
        f"kms_identity = {_toml(kms_identity)}",
        'data_dir = "."',
        "",
        "[hsm]",
        f"module = {_toml(SOFTHSM_MODULE)}",
        f'token_uri = "pkcs11:token={TOKEN_LABEL}"',
        f"pin_credential = {_toml(PIN_CRED)}",
        'softhsm2_conf = "softhsm/softhsm2.conf"',
        "",
    ]
    for name, port in (("ue_listener", UE_PORT), ("li_listener", LI_PORT)):
        lines += [
            f"[{name}]",
            'host = "0.0.0.0"',
            f"port = {port}",
            'cert = "pki/server.pem"',
            'key = "pki/server.key"',
            'client_ca = "pki/ca.pem"',
            "",
        ]
    lines += ["[metrics]", f'address = "127.0.0.1:{METRICS_PORT}"', ""]
    policy = {**policy, **FIXED_POLICY}
    for section, table in (("roles", roles), ("policy", policy)):
        if table:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml(v)}" for k, v in sorted(table.items())]
            lines.append("")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        out = value.replace("\\", "\\\\").replace('"', '\\"')
        if any(ord(c) < 0x20 for c in out):
            raise TargetRefused("role file: control characters in a value")
        return f'"{out}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TargetRefused(f"role file: unsupported value type {type(value).__name__}")


def parse_roles(text: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetRefused(f"role file is not valid TOML: {exc}") from None
    for section, data in raw.items():
        if section not in ROLE_SECTIONS or not isinstance(data, dict):
            raise TargetRefused(f"role file: section [{section}] is not the operator's to set")
        allowed = ROLE_SECTIONS[section]
        if allowed is not None and set(data) - allowed:
            raise TargetRefused(f"role file: [{section}] may only set {', '.join(sorted(allowed))}")
    fixed = set(raw.get("policy", {})) & set(FIXED_POLICY)
    if fixed:
        raise TargetRefused(
            f"role file: [policy] {', '.join(sorted(fixed))} is fixed on the appliance"
        )
    identity = raw.get("node", {}).get("kms_identity")
    if not isinstance(identity, str):
        raise TargetRefused("role file: [node] kms_identity is required")
    return identity, raw.get("roles", {}), raw.get("policy", {})


def make_csr(key_path: Path, csr_path: Path, identity: str | None) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(key_path, pem)
    mid = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"kmsnode {mid[:16]}".strip())])
    )
    if identity:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=False
        )
    csr = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    _write(csr_path, csr, 0o644)
    return csr


def show_csr(csr: bytes) -> None:
    print("KMSNODE-CSR-BEGIN", flush=True)
    sys.stdout.write(csr.decode())
    print("KMSNODE-CSR-END", flush=True)
    say(
        "waiting for the operator: sign this request and install the chain and roles with "
        "`kmsnode-image provision --chain FILE --ca FILE --roles FILE`"
    )


def node_init(layout: Layout = Layout()) -> int:
    node, pki = layout.node, layout.pki
    node.mkdir(mode=0o700, exist_ok=True)
    _chown(node)
    pki.mkdir(mode=0o700, exist_ok=True)
    _chown(pki)
    done = node / ".initialised"
    if not done.exists():
        say(f"first boot: creating the HSM token and keys ({layout.variant} image)")
        pin = _credential("kmsnode.hsm-pin") or secrets.token_hex(16)
        conf = init_token(layout, pin)
        layout.credential.parent.mkdir(mode=0o700, exist_ok=True)
        seal_pin(pin, layout.credential, layout.insecure)
        _make_keys(layout, conf, pin)
        del pin
        make_csr(pki / "server.key", pki / "server.csr", _credential("kmsnode.identity"))
        _write(done, b"", 0o600)
        say("HSM token, keys and sealed PIN ready")
    if layout.insecure:
        say("INSECURE IMAGE: the HSM PIN is sealed with a host key on this disk, not a TPM")
    if not layout.config.exists():
        if layout.variant == "test":
            _self_provision(layout)
        else:
            show_csr((pki / "server.csr").read_bytes())
    return 0


def _make_keys(layout: Layout, conf: Path, pin: str) -> None:
    """The node's keys in the token: `kmsnode init-keys` as the service user (PIN as credential)."""
    run = Path("/run/kmsnode-init")
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(mode=0o700)
    try:
        _chown(run)
        _write(run / PIN_CRED, pin.encode(), 0o400)
        cfg = run / "keys.toml"
        text = config_text("sip:kms.invalid", {}, {}).replace(
            'data_dir = "."', f'data_dir = "{layout.node}"'
        )
        text = text.replace('softhsm2_conf = "softhsm/softhsm2.conf"', f'softhsm2_conf = "{conf}"')
        _write(cfg, text.encode(), 0o600)
        _as_user(
            [str(Path(sys.executable).parent / "kmsnode"), "init-keys", "--config", str(cfg)],
            {"CREDENTIALS_DIRECTORY": str(run), "PYTHONDONTWRITEBYTECODE": "1"},
        )
    finally:
        shutil.rmtree(run, ignore_errors=True)


def provision(chain_pem: bytes, ca_pem: bytes, roles_text: str, layout: Layout = Layout()) -> int:
    from firmware import config as config_mod
    from firmware.core.errors import ConfigError

    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise TargetRefused("the chain or CA file is not PEM certificates") from None
    key = serialization.load_pem_private_key((layout.pki / "server.key").read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) != key.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise TargetRefused("the chain's first certificate is not for this node's key")
    identity, roles, policy = parse_roles(roles_text)
    text = config_text(identity, roles, policy)
    check = layout.node / ".kmsnode.toml.check"
    _write(check, text.encode())
    try:
        config_mod.load(check)
    except ConfigError as exc:
        raise TargetRefused(f"role file refused by the node: {exc}") from None
    finally:
        check.unlink(missing_ok=True)
    _write(layout.pki / "server.pem", chain_pem, 0o644)
    _write(layout.pki / "ca.pem", ca_pem, 0o644)
    _write(layout.config, text.encode())
    say(f"provisioned as {identity}: certificate chain of {len(chain)}, roles {sorted(roles)}")
    return 0


def provision_from_credentials(layout: Layout = Layout()) -> int:
    parts = {n: _credential(f"kmsnode.provision.{n}") for n in ("chain", "ca", "roles")}
    missing = [n for n, v in parts.items() if v is None]
    if missing:
        raise TargetRefused(f"provisioning credentials missing: {', '.join(missing)}")
    if layout.config.exists():
        say("already provisioned; provisioning credentials ignored")
        return 0
    return provision(
        (parts["chain"] or "").encode(), (parts["ca"] or "").encode(), parts["roles"] or "", layout
    )


def make_ca(name: str, days: int = 30) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A throw-away CA (the test image's, and the operator's CA in tests)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return self_signed(key, name, datetime.timedelta(minutes=5), days, ca=True), key


def _self_provision(layout: Layout) -> None:
    """Test image only: a throw-away CA (kept in dev-ca/, never in pki/) signs the node's CSR."""
    ca_dir = layout.state / "dev-ca"
    ca_dir.mkdir(mode=0o700, exist_ok=True)
    ca, ca_key = make_ca("kmsnode TEST IMAGE CA")
    csr = x509.load_pem_x509_csr((layout.pki / "server.csr").read_bytes())
    leaf = issue_server_cert(csr, ca, ca_key, "sip:kms.test.invalid")
    key_pem = ca_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(ca_dir / "ca.key", key_pem, owner=False)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    say("TEST IMAGE: self-provisioning with a throw-away CA (never on a production image)")
    provision(leaf + ca_pem, ca_pem, '[node]\nkms_identity = "sip:kms.test.invalid"\n', layout)


def issue_server_cert(
    csr: x509.CertificateSigningRequest,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    identity: str,
) -> bytes:
    """What an operator's CA does with the node's CSR (tests and the test image use it)."""
    import ipaddress

    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(identity),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


# -- health gate ------------------------------------------------------------------------------


def tls_name(cert: x509.Certificate) -> str:
    """A DNS name the server certificate holds (the health check connects to 127.0.0.1)."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "localhost"
    dns = names.get_values_for_type(x509.DNSName)
    return dns[0] if dns else "localhost"


def check_health(port: int, root_pem: bytes, name: str = "localhost", timeout: float = 5.0) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    creds = grpc.ssl_channel_credentials(root_certificates=root_pem)
    opts = [("grpc.ssl_target_name_override", name)]
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=opts) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def _unit_failed(unit: str) -> bool:
    return subprocess.run(["systemctl", "is-failed", "--quiet", unit]).returncode == 0


def health(config: Path, timeout: float, reboot_on_failure: bool) -> int:
    from firmware import config as config_mod

    cfg = config_mod.load(config)
    chain = x509.load_pem_x509_certificates(cfg.ue_listener.cert.read_bytes())
    root = chain[-1].public_bytes(serialization.Encoding.PEM)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            last = check_health(cfg.ue_listener.port, root, tls_name(chain[0]))
            if last == "SERVING":
                say("health: SERVING on the UE listener")
                return 0
        except Exception as exc:  # grpc.RpcError and TLS errors while the node starts
            last = type(exc).__name__
        if _unit_failed("kmsnode.service"):
            last = "kmsnode.service failed"
            break
        time.sleep(1)
    say(f"health: not SERVING ({last})")
    if reboot_on_failure and BOOT_COUNT_VAR.exists():
        say("health: this boot is being assessed and failed; rebooting to charge the try")
        subprocess.run(["systemctl", "reboot", "--no-block"], check=False)
    return 1


# -- firewall ---------------------------------------------------------------------------------


def ruleset(ports: list[int]) -> str:
    listeners = f"    tcp dport {{ {', '.join(str(p) for p in ports)} }} accept\n" if ports else ""
    return (
        "add table inet kmsnode\n"
        "delete table inet kmsnode\n"
        "table inet kmsnode {\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy drop;\n"
        "    iif lo accept\n"
        "    ct state established,related accept\n"
        "    ct state invalid drop\n"
        "    icmp type { echo-request, destination-unreachable, time-exceeded, "
        "parameter-problem } accept\n"
        "    meta l4proto ipv6-icmp accept\n"
        "    udp sport 67 udp dport 68 accept\n"
        "    udp sport 547 udp dport 546 accept\n"
        f"{listeners}"
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy drop;\n"
        "  }\n"
        "}\n"
    )


def listener_ports(config: Path) -> list[int]:
    """The UE and LI listener ports of the node's config; none when not provisioned yet."""
    if not config.exists():
        return []
    from firmware import config as config_mod

    cfg = config_mod.load(config)
    return sorted({cfg.ue_listener.port, cfg.li_listener.port})


def firewall(config: Path, apply: bool) -> int:
    text = ruleset(listener_ports(config))
    if not apply:
        sys.stdout.write(text)
        return 0
    proc = subprocess.run(["nft", "-f", "-"], input=text, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"nft failed: {proc.stderr.strip()[-300:]}")
    ports = listener_ports(config)
    say(f"firewall: inbound allowed only to {ports or 'no listener (not provisioned)'}")
    return 0
