"""The node's TOML configuration, validated once at start into frozen dataclasses.

Rules:
- Unknown sections and keys are refused (a typo must not silently fall back to a default).
- Secrets never appear in the config text: the HSM PIN is named by a file (`pin_file`) or a
  systemd credential (`pin_credential`); a `pin` key is refused.
- Relative paths are resolved against the config file's directory.
- Every error is a ConfigError naming the setting, never echoing a value that could be secret.
"""

from __future__ import annotations

import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware.core.errors import ConfigError
from firmware.core.identity import IdentityError, canonical
from hsm.psks import DEFAULT_LIMIT as PSK_OBJECTS


@dataclass(frozen=True)
class HsmConfig:
    module: Path
    token_uri: str
    pin_file: Path | None
    pin_credential: str | None
    probe_interval: float = 2.0
    session_copies: bool = True
    device_match: dict[str, str] = field(default_factory=dict)
    softhsm2_conf: Path | None = None  # SoftHSM only: exported as SOFTHSM2_CONF before loading
    psk_objects: int = PSK_OBJECTS  # user PSKs held in the token at most (hsm/psks.py)


@dataclass(frozen=True)
class ListenerConfig:
    """One gRPC listener and the limits that keep any one client from starving it."""

    host: str
    port: int
    cert: Path
    key: Path
    client_ca: Path | None
    max_connections: int = 1024
    max_streams: int = 32  # open streaming RPCs (health Watch, reflection, WatchAlarms)
    max_streams_per_client: int = 4  # per client certificate (all anonymous clients are one)
    keepalive_time: float = 60.0
    keepalive_timeout: float = 20.0
    max_connection_idle: float = 300.0
    max_connection_age: float = 14400.0
    max_connection_age_grace: float = 300.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class HttpLimits:
    """Caps of one HTTPS listener (firmware/api/https.py; config keys of the same names)."""

    max_connections: int = 256
    max_header_bytes: int = 8192
    max_body_bytes: int = 65536
    idle_timeout: float = 60.0
    handshake_timeout: float = 10.0
    request_timeout: float = 10.0


@dataclass(frozen=True)
class UeHttpConfig:
    """[ue_http_listener]: MIKEY over HTTPS for UEs (RFC 6043 section 7, TS 33.328). Every HTTP
    detail TS 33.328 leaves to us here is a setting (README "MIKEY over HTTPS")."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 7445
    cert: Path = Path()
    key: Path = Path()
    client_ca: Path | None = None  # client certificates are asked for (optional) when given
    path: str = "/mikey"
    content_type: str = "application/mikey"  # RFC 3830 section 10.1
    body_encoding: str = "binary"  # or "base64"
    error_header: str = "MIKEY-Error"  # the ERR number of a 400 answer
    reason_header: str = "KMS-Reason"  # the ErrorInfo reason of every refusal
    tls_identity: str = "none"  # or "client-certificate": IDRi / IDRr must be a SAN URI of it
    tls_min_version: str = "1.2"
    limits: HttpLimits = HttpLimits()


@dataclass(frozen=True)
class X1Config:
    """[x1_listener]: ETSI TS 103 221-1 X1 (the ADMF/LIPF provisions warrants as tasks)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 7446  # TS 103 221-1 7.2.2.3 defaults to 443
    cert: Path = Path()
    key: Path = Path()
    client_ca: Path | None = None
    path: str = "/X1/NE"  # TS 103 221-1 7.2.2.3 default for ADMF -> NE
    ne_identifier: str = "kmsnode"
    admf_identifiers: tuple[str, ...] = ()  # accepted admfIdentifier values; empty: any
    admf_binding: str = "certificate-uid"  # or "none" (TS 103 221-1 8.2.4)
    version: str = "v1.11.1"  # the version our responses carry
    response_content_type: str = "application/xml"
    request_content_types: tuple[str, ...] = ()  # accepted media types; empty: any
    deactivate_all: bool = True  # DeactivateAllTasks enabled (6.3.4: by default)
    max_depth: int = 32
    max_messages: int = 64  # x1RequestMessage elements per container
    limits: HttpLimits = HttpLimits(max_connections=16, max_body_bytes=1 << 20)


@dataclass(frozen=True)
class PolicyConfig:
    clock_skew: float = 60.0
    ticket_lifetime: float = 3600.0
    max_ticket_lifetime: float = 86400.0
    key_forking: bool = True
    replay_cache_capacity: int = 1_000_000
    require_clock_sync: bool = False  # refuse to serve while the clock is not synchronised


@dataclass(frozen=True)
class RolesConfig:
    """[roles]: certificate identities per role, typed as the SAN they match, and revocations."""

    members: dict[str, tuple[str, ...]] = field(default_factory=dict)  # role -> dns:/uri: names
    revoked_serials: frozenset[int] = frozenset()
    revoked_fingerprints: frozenset[str] = frozenset()  # SHA-256, lower-case hex
    crl: Path | None = None


@dataclass(frozen=True)
class StoreConfig:
    """[store]: PostgreSQL shared by every node of a cluster; without `url`, the embedded SQLite
    file ([node] state_db) of a single process. The password comes from a file or a systemd
    credential, never from the URL or this text."""

    url: str | None = None
    password_file: Path | None = None
    password_credential: str | None = None

    @property
    def shared(self) -> bool:
        return self.url is not None


@dataclass(frozen=True)
class AlarmConfig:
    queue_size: int = 1000  # per watcher; the oldest are dropped beyond it
    watchers_per_identity: int = 4
    max_watchers: int = 64


@dataclass(frozen=True)
class ClientConfig:
    """TLS credentials the `kmsnode` CLI uses to reach the LI listener (admin and DF2 tools)."""

    ca: Path | None = None
    admin_cert: Path | None = None
    admin_key: Path | None = None
    df2_cert: Path | None = None
    df2_key: Path | None = None
    x1_cert: Path | None = None  # the ADMF's X1 client pair (demo and tests)
    x1_key: Path | None = None


@dataclass(frozen=True)
class Config:
    path: Path
    kms_identity: str
    data_dir: Path
    state_db: Path
    audit_log: Path
    hsm: HsmConfig
    ue_listener: ListenerConfig
    li_listener: ListenerConfig
    roles: RolesConfig
    policy: PolicyConfig
    metrics_address: str | None
    grace_period: float = 10.0
    # gRPC handler threads per listener: 8 measured best (bench/bench_kms.py --workers; 2 left
    # the audit and resolution group commits nothing to group while a handler waited on an fsync)
    workers: int = 8
    node_id: str = "node"  # this node's name in a cluster: its audit chain, its alarms' origin
    processes: int = 1  # worker processes sharing the listeners (SO_REUSEPORT; PostgreSQL only)
    store: StoreConfig = field(default_factory=StoreConfig)
    clients: ClientConfig = field(default_factory=ClientConfig)
    alarms: AlarmConfig = field(default_factory=AlarmConfig)
    refused_records_per_second: int = 10  # audit records of refusals per role-less certificate
    ue_http: UeHttpConfig = field(default_factory=UeHttpConfig)
    x1: X1Config = field(default_factory=X1Config)

    @property
    def runtime_file(self) -> Path:
        """Where `serve` records the addresses it listens on (ports may be chosen at bind)."""
        return self.data_dir / "listeners.json"


_SECTIONS = {
    "node",
    "hsm",
    "ue_listener",
    "li_listener",
    "roles",
    "policy",
    "metrics",
    "clients",
    "alarms",
    "audit",
    "store",
    "ue_http_listener",
    "x1_listener",
}


class _Section:
    def __init__(self, name: str, data: Any, base: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"[{name}] must be a table")
        self.name, self.data, self.base, self.used = name, data, base, set[str]()

    def _get(self, key: str, kind: type | tuple[type, ...], default: Any, required: bool) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise ConfigError(f"{self.name}.{key} is required")
            return default
        value = self.data[key]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise ConfigError(f"{self.name}.{key} must be a number")
        if not isinstance(value, kind):
            raise ConfigError(f"{self.name}.{key} has the wrong type")
        return value

    def text(self, key: str, default: str | None = None, required: bool = False) -> Any:
        return self._get(key, str, default, required)

    def number(self, key: str, default: float, positive: bool = True) -> float:
        value = float(self._get(key, (int, float), default, False))
        if positive and value <= 0:
            raise ConfigError(f"{self.name}.{key} must be positive")
        return value

    def count(self, key: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
        """A whole number (a TOML integer: `workers = 2.5` is refused, not truncated to 2) from
        `minimum` to `maximum`; a count of threads, connections or bytes cannot be a fraction,
        and truncating one would turn `max_streams = 0.5` into a listener that serves nothing."""
        value = self._get(key, int, default, False)
        if value < minimum:
            raise ConfigError(f"{self.name}.{key} must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{self.name}.{key} must be at most {maximum}")
        return int(value)

    def flag(self, key: str, default: bool) -> bool:
        return bool(self._get(key, bool, default, False))

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = str(self.text(key, default))
        if value not in choices:
            raise ConfigError(f"{self.name}.{key} must be one of {', '.join(choices)}")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        values = self._get(key, list, [], False)
        if not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{self.name}.{key} must be a list of strings")
        return tuple(values)

    def path(self, key: str, default: str | None = None, required: bool = False) -> Path | None:
        value = self.text(key, default, required)
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else (self.base / path)

    def done(self) -> None:
        unknown = set(self.data) - self.used
        if unknown:
            raise ConfigError(f"unknown setting(s) in [{self.name}]: {', '.join(sorted(unknown))}")


def _listener(section: _Section, default_port: int) -> ListenerConfig:
    host = section.text("host", "127.0.0.1")
    port = section.count("port", default_port, minimum=0, maximum=65535)
    cert = section.path("cert", required=True)
    key = section.path("key", required=True)
    client_ca = section.path("client_ca")
    d = ListenerConfig(host, port, Path(), Path(), None)
    limits = ListenerConfig(
        host,
        port,
        cert or Path(),
        key or Path(),
        client_ca,
        max_connections=section.count("max_connections", d.max_connections),
        max_streams=section.count("max_streams", d.max_streams),
        max_streams_per_client=section.count("max_streams_per_client", d.max_streams_per_client),
        keepalive_time=section.number("keepalive_time", d.keepalive_time),
        keepalive_timeout=section.number("keepalive_timeout", d.keepalive_timeout),
        max_connection_idle=section.number("max_connection_idle", d.max_connection_idle),
        max_connection_age=section.number("max_connection_age", d.max_connection_age),
        max_connection_age_grace=section.number(
            "max_connection_age_grace", d.max_connection_age_grace
        ),
    )
    section.done()
    return limits


def _http_limits(section: _Section, d: HttpLimits) -> HttpLimits:
    return HttpLimits(
        max_connections=section.count("max_connections", d.max_connections),
        max_header_bytes=section.count("max_header_bytes", d.max_header_bytes),
        max_body_bytes=section.count("max_body_bytes", d.max_body_bytes),
        idle_timeout=section.number("idle_timeout", d.idle_timeout),
        handshake_timeout=section.number("handshake_timeout", d.handshake_timeout),
        request_timeout=section.number("request_timeout", d.request_timeout),
    )


def _http_address(section: _Section, default_port: int, tls: ListenerConfig) -> dict[str, Any]:
    """host, port and the TLS files (the gRPC listener's `tls` when not given)."""
    port = section.count("port", default_port, minimum=0, maximum=65535)
    path = section.text("path", None)
    if path is not None and not path.startswith("/"):
        raise ConfigError(f"{section.name}.path must start with /")
    found = {
        "enabled": section.flag("enabled", False),
        "host": section.text("host", "127.0.0.1"),
        "port": port,
        "cert": section.path("cert") or tls.cert,
        "key": section.path("key") or tls.key,
        "client_ca": section.path("client_ca") or tls.client_ca,
    }
    return {**found, **({"path": path} if path is not None else {})}


def _ue_http(raw: Any, base: Path, ue: ListenerConfig) -> UeHttpConfig:
    section = _Section("ue_http_listener", raw, base)
    d = UeHttpConfig()
    config = UeHttpConfig(
        **_http_address(section, d.port, ue),
        content_type=section.text("content_type", d.content_type),
        body_encoding=section.choice("body_encoding", d.body_encoding, ("binary", "base64")),
        error_header=section.text("error_header", d.error_header),
        reason_header=section.text("reason_header", d.reason_header),
        tls_identity=section.choice("tls_identity", d.tls_identity, ("none", "client-certificate")),
        tls_min_version=section.choice("tls_min_version", d.tls_min_version, ("1.2", "1.3")),
        limits=_http_limits(section, d.limits),
    )
    section.done()
    if config.tls_identity == "client-certificate" and config.client_ca is None:
        raise ConfigError("ue_http_listener.tls_identity = client-certificate needs a client_ca")
    return config


def _x1(raw: Any, base: Path, li: ListenerConfig) -> X1Config:
    section = _Section("x1_listener", raw, base)
    d = X1Config()
    version = section.text("version", d.version)
    if not re.fullmatch(r"v1\.\d+\.\d+", version):
        raise ConfigError("x1_listener.version must look like v1.11.1 (TS 103 221-1 4.5)")
    config = X1Config(
        **_http_address(section, d.port, li),
        ne_identifier=section.text("ne_identifier", d.ne_identifier),
        admf_identifiers=section.texts("admf_identifiers"),
        admf_binding=section.choice("admf_binding", d.admf_binding, ("certificate-uid", "none")),
        version=version,
        response_content_type=section.text("response_content_type", d.response_content_type),
        request_content_types=section.texts("request_content_types"),
        deactivate_all=section.flag("deactivate_all", d.deactivate_all),
        max_depth=section.count("max_depth", d.max_depth),
        max_messages=section.count("max_messages", d.max_messages),
        limits=_http_limits(section, d.limits),
    )
    section.done()
    if config.client_ca is None:
        raise ConfigError("x1_listener needs a client_ca (X1 is mutual TLS)")
    return config


_SAN_TYPES = ("dns:", "uri:")


def _roles(raw: Any, base: Path) -> RolesConfig:
    """[roles]: `df2`, `admin`, `ue`, `x1` = lists of typed identities; `revoked`; `crl`."""
    if not isinstance(raw, dict):
        raise ConfigError("[roles] must be a table")
    section = _Section("roles", raw, base)
    members: dict[str, tuple[str, ...]] = {}
    for role in ("df2", "admin", "ue", "x1"):
        entries = section._get(role, list, [], False)
        if not all(isinstance(m, str) for m in entries):
            raise ConfigError(f"roles.{role} must be a list of certificate identities")
        for entry in entries:
            if not entry.startswith(_SAN_TYPES) or len(entry) <= 4:
                raise ConfigError(
                    f"roles.{role}: each identity names the SAN type it matches, e.g."
                    ' "dns:df2.li.example.net" or "uri:urn:example:df2"'
                )
        if entries:
            members[role] = tuple(entries)
    serials, fingerprints = set(), set()
    revoked = section._get("revoked", list, [], False)
    for entry in revoked:
        kind, _, value = str(entry).partition(":")
        try:
            if kind == "serial":
                serials.add(int(value.replace(":", ""), 16))
                continue
            if kind == "sha256" and len(bytes.fromhex(value.replace(":", ""))) == 32:
                fingerprints.add(value.replace(":", "").lower())
                continue
        except ValueError:
            pass
        raise ConfigError('roles.revoked: entries are "serial:<hex>" or "sha256:<64 hex>"')
    crl = section.path("crl")
    section.done()
    return RolesConfig(members, frozenset(serials), frozenset(fingerprints), crl)


def load(path: Path | str) -> Config:
    """Read and validate the config file at `path`."""
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    unknown = set(raw) - _SECTIONS
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
    base = path.parent

    node = _Section("node", raw.get("node", {}), base)
    try:
        kms_identity = canonical(node.text("kms_identity", required=True))
    except IdentityError as exc:
        raise ConfigError(f"node.kms_identity is not a SIP/TEL URI: {exc}") from None
    data_dir = node.path("data_dir", ".")
    assert data_dir is not None
    state_db = Path(node.text("state_db", "state.sqlite"))
    audit_log = Path(node.text("audit_log", "audit.log"))
    grace = node.number("grace_period", 10.0)
    workers = node.count("workers", 8)
    node_id = node.text("node_id", socket.gethostname() or "node")
    processes = node.count("processes", 1)
    node.done()
    if not node_id or len(node_id) > 64 or not all(c.isalnum() or c in "-_." for c in node_id):
        raise ConfigError("node.node_id must be 1 to 64 letters, digits, '-', '_' or '.'")

    hsm = _Section("hsm", raw.get("hsm", {}), base)
    if "pin" in hsm.data or "pin_value" in hsm.data:
        raise ConfigError(
            "hsm: a PIN must not be written in the config; use pin_file or pin_credential"
        )
    device = hsm.data.get("device", {})
    hsm.used.add("device")
    if not isinstance(device, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in device.items()
    ):
        raise ConfigError("hsm.device must be a table of udev property names to strings")
    hsm_config = HsmConfig(
        module=hsm.path("module", "/usr/lib/softhsm/libsofthsm2.so") or Path(),
        token_uri=hsm.text("token_uri", required=True),
        pin_file=hsm.path("pin_file"),
        pin_credential=hsm.text("pin_credential"),
        probe_interval=hsm.number("probe_interval", 2.0),
        session_copies=hsm.flag("session_copies", True),
        device_match=dict(device),
        softhsm2_conf=hsm.path("softhsm2_conf"),
        psk_objects=hsm.count("psk_objects", PSK_OBJECTS),
    )
    hsm.done()
    if (hsm_config.pin_file is None) == (hsm_config.pin_credential is None):
        raise ConfigError("hsm: exactly one of pin_file and pin_credential is required")

    ue = _listener(_Section("ue_listener", raw.get("ue_listener", {}), base), 7443)
    li = _listener(_Section("li_listener", raw.get("li_listener", {}), base), 7444)
    if li.client_ca is None:
        raise ConfigError("li_listener.client_ca is required (Xk needs client certificates)")

    roles = _roles(raw.get("roles", {}), base)
    ue_http = _ue_http(raw.get("ue_http_listener", {}), base, ue)
    x1 = _x1(raw.get("x1_listener", {}), base, li)

    pol = _Section("policy", raw.get("policy", {}), base)
    policy = PolicyConfig(
        clock_skew=pol.number("clock_skew", 60.0),
        ticket_lifetime=pol.number("ticket_lifetime", 3600.0),
        max_ticket_lifetime=pol.number("max_ticket_lifetime", 86400.0),
        key_forking=pol.flag("key_forking", True),
        replay_cache_capacity=pol.count("replay_cache_capacity", 1_000_000),
        require_clock_sync=pol.flag("require_clock_sync", False),
    )
    pol.done()
    if policy.ticket_lifetime > policy.max_ticket_lifetime:
        raise ConfigError("policy.ticket_lifetime exceeds policy.max_ticket_lifetime")

    metrics = _Section("metrics", raw.get("metrics", {}), base)
    metrics_address = metrics.text("address")
    metrics.done()

    al = _Section("alarms", raw.get("alarms", {}), base)
    alarms = AlarmConfig(
        queue_size=al.count("queue_size", 1000),
        watchers_per_identity=al.count("watchers_per_identity", 4),
        max_watchers=al.count("max_watchers", 64),
    )
    al.done()
    au = _Section("audit", raw.get("audit", {}), base)
    refused_per_second = au.count("refused_records_per_second", 10)
    au.done()

    st = _Section("store", raw.get("store", {}), base)
    if "password" in st.data:
        raise ConfigError(
            "store: a password must not be written in the config;"
            " use password_file or password_credential"
        )
    store = StoreConfig(
        url=st.text("url"),
        password_file=st.path("password_file"),
        password_credential=st.text("password_credential"),
    )
    st.done()
    if store.url is None and (store.password_file or store.password_credential):
        raise ConfigError("store: a password is given but no url")
    if processes > 1 and not store.shared:
        raise ConfigError(
            "node.processes > 1 needs [store] url (PostgreSQL): worker processes share the"
            " replay cache, alarms and state, which the embedded SQLite store cannot"
        )
    http_ports = [h.port for h in (ue_http, x1) if h.enabled]
    if processes > 1 and 0 in (ue.port, li.port, *http_ports):
        raise ConfigError(
            "node.processes > 1 needs fixed listener ports (port 0 would give each worker another)"
        )

    cl = _Section("clients", raw.get("clients", {}), base)
    clients = ClientConfig(
        ca=cl.path("ca"),
        admin_cert=cl.path("admin_cert"),
        admin_key=cl.path("admin_key"),
        df2_cert=cl.path("df2_cert"),
        df2_key=cl.path("df2_key"),
        x1_cert=cl.path("x1_cert"),
        x1_key=cl.path("x1_key"),
    )
    cl.done()

    return Config(
        path=path,
        kms_identity=kms_identity,
        data_dir=data_dir,
        state_db=state_db if state_db.is_absolute() else data_dir / state_db,
        audit_log=audit_log if audit_log.is_absolute() else data_dir / audit_log,
        hsm=hsm_config,
        ue_listener=ue,
        li_listener=li,
        roles=roles,
        policy=policy,
        metrics_address=metrics_address,
        grace_period=grace,
        workers=workers,
        clients=clients,
        alarms=alarms,
        refused_records_per_second=refused_per_second,
        node_id=node_id,
        processes=processes,
        store=store,
        ue_http=ue_http,
        x1=x1,
    )
