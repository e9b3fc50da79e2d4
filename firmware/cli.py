"""The `kmsnode` command: the composition root (the only module that wires api, hsm and store).

Rules:
- PINs come from files or systemd credentials named in the config, never from argv.
- A generated PSK is printed once, as hex, on stdout; nothing else prints key material.
- Errors are printed as one line without a stack trace and exit with status 2 (usage/config) or
  1 (the operation failed).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from firmware import config as config_mod
from firmware.core.admin import Admin
from firmware.core.errors import ConfigError, KmsError
from firmware.core.ports import Caller, KeyName, Role

DEFAULT_CONFIG = os.environ.get("KMSNODE_CONFIG", "/etc/kmsnode/kmsnode.toml")
log = logging.getLogger("kmsnode")


# --- composition ------------------------------------------------------------------------------
# The node's parts are built in firmware/node.py (the one composition root); offline commands use
# its open_vault / open_store and write the audit log themselves (the node is then not running,
# so this process is the log's only writer).


def open_admin(cfg: config_mod.Config) -> tuple[Admin, Any, Any, Any]:
    """Admin over the config's vault and store, auditing to the node's log (node stopped)."""
    from firmware.audit.log import AuditLog
    from firmware.node import audit_medium, open_store, open_vault

    vault = open_vault(cfg, monitor=False)
    store = open_store(cfg)
    audit = AuditLog(audit_medium(cfg, store), vault.audit_hmac)
    admin = Admin(
        vault, store, audit, time.time, cfg.policy.max_ticket_lifetime, cfg.policy.clock_skew
    )
    return admin, vault, store, audit


def local_operator() -> Caller:
    """Who runs an offline command: the local user, as audit records name it. Whoever can run
    `kmsnode` with the node's config, PIN file and state (root, on the appliance) administers it."""
    me = f"local:{getpass.getuser()}"
    return Caller((me,), ((Role.ADMIN, (me,)),))


def _close(*parts: Any) -> None:
    for part in parts:
        part.close()


# --- commands ---------------------------------------------------------------------------------

DEV_CONFIG = """\
# kmsnode development configuration, written by `kmsnode dev-init` (loopback only).
[node]
kms_identity = "{kms}"
data_dir = "."

[hsm]
module = "{module}"
token_uri = "pkcs11:token={label}"
pin_file = "softhsm/user.pin"
softhsm2_conf = "softhsm/softhsm2.conf"
probe_interval = 2.0

[ue_listener]
host = "127.0.0.1"
port = {ue_port}
cert = "pki/server.pem"
key = "pki/server.key"

[li_listener]
host = "127.0.0.1"
port = {li_port}
cert = "pki/li-server.pem"
key = "pki/li-server.key"
client_ca = "pki/li-ca.pem"

[ue_http_listener]
# MIKEY over HTTPS for UEs (README "MIKEY over HTTPS"); off unless enabled
enabled = true
host = "127.0.0.1"
port = {ue_http_port}
path = "/mikey"

[x1_listener]
# ETSI TS 103 221-1 X1 for the ADMF (mutual TLS 1.3, role x1); off unless enabled
enabled = true
host = "127.0.0.1"
port = {x1_port}
path = "/X1/NE"
ne_identifier = "kmsnode-dev"
admf_identifiers = ["{x1}"]

[roles]
# each identity names the SAN type it matches: dns:<name> or uri:<uri>
df2 = ["dns:{df2}"]
admin = ["dns:{admin}"]
x1 = ["dns:{x1}"]
# revoked = ["serial:<hex>", "sha256:<fingerprint hex>"]   reloaded on SIGHUP
# crl = "pki/li.crl"

[policy]
clock_skew = 60
ticket_lifetime = 3600
max_ticket_lifetime = 86400
key_forking = true

[metrics]
address = "127.0.0.1:{metrics_port}"

[clients]
ca = "pki/ca.pem"
admin_cert = "pki/admin.pem"
admin_key = "pki/admin.key"
df2_cert = "pki/df2.pem"
df2_key = "pki/df2.key"
x1_cert = "pki/x1.pem"
x1_key = "pki/x1.key"
"""


def _port(given: int | None, grpc_port: int, default: int) -> int:
    """A dev listener's port: as given, else any when its gRPC sibling takes any, else default."""
    if given is not None:
        return given
    return 0 if grpc_port == 0 else default


def cmd_dev_init(args: argparse.Namespace) -> int:
    from firmware.devpki import DevIdentities, make_dev_pki
    from hsm.softhsm import create_token, module_path, write_secret

    directory = Path(args.directory).resolve()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ids = DevIdentities()
    token_dir = directory / "softhsm"
    if not (token_dir / "softhsm2.conf").exists():
        so_pin = secrets.token_hex(8)
        create_token(token_dir, "kmsnode", secrets.token_hex(8), so_pin)
        # A development token only: key transport (kmsnode keys export-/import-wrapped) needs it.
        write_secret(token_dir / "so.pin", so_pin)
    make_dev_pki(directory / "pki", ids)
    cfg_path = directory / "kmsnode.toml"
    if not cfg_path.exists():
        cfg_path.write_text(
            DEV_CONFIG.format(
                kms=ids.kms,
                module=module_path(),
                label="kmsnode",
                df2=ids.df2,
                admin=ids.admin,
                x1=ids.x1,
                ue_port=args.ue_port,
                ue_http_port=_port(args.ue_http_port, args.ue_port, 7445),
                x1_port=_port(args.x1_port, args.li_port, 7446),
                li_port=args.li_port,
                metrics_port=args.metrics_port,
            )
        )
    init_keys(config_mod.load(cfg_path))
    print(f"dev node ready in {directory}")
    print(f"config: {cfg_path}")
    return 0


def init_keys(cfg: config_mod.Config) -> None:
    """Make sure the token holds v1 of every key the node needs, each recorded in the state
    (first boot of an appliance, dev-init). Keys are generated inside the HSM; nothing about
    them is printed."""
    from firmware.node import open_store, open_vault

    vault, store = open_vault(cfg, monitor=False), open_store(cfg)
    try:
        vault.ensure_keys()
        Admin(vault, store, _NoAudit(), time.time, 0, 0).record_existing()
    finally:
        _close(store, vault)


def cmd_init_keys(args: argparse.Namespace) -> int:
    init_keys(config_mod.load(args.config))
    print("keys ready in the token")
    return 0


def cmd_dev_node(args: argparse.Namespace) -> int:
    from firmware.devnode import run

    return run(args.dir, args.json)


class _NoAudit:
    """init-keys only records which key versions the token holds: no change to audit."""

    def append(self, time: float, event: str, fields: object) -> int:
        raise AssertionError(f"init-keys must not make audited changes ({event})")


def runtime_record(cfg: config_mod.Config, node: Any) -> dict[str, Any]:
    """What the runtime file records of a running node: every listener's HOST:PORT and our pid
    (the commands that reach a running node read it)."""
    record: dict[str, Any] = {
        "ue": f"{cfg.ue_listener.host}:{node.ue_port}",
        "li": f"{cfg.li_listener.host}:{node.li_port}",
        "pid": os.getpid(),
    }
    if node.ue_http is not None:
        record["ue_http"] = f"{cfg.ue_http.host}:{node.ue_http.port}"
    if node.x1 is not None:
        record["x1"] = f"{cfg.x1.host}:{node.x1.port}"
    return record


def cmd_serve(args: argparse.Namespace) -> int:
    from firmware.node import Node
    from firmware.process import harden

    harden()
    cfg = config_mod.load(args.config)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    worker = args.worker
    if cfg.processes > 1 and worker is None:
        from firmware.supervisor import supervise

        return supervise(cfg, Path(args.config), (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    if worker is not None:
        from firmware.supervisor import die_with_parent, worker_config

        die_with_parent()
        cfg = worker_config(cfg, worker)
    node = Node.start(cfg)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda _s, _f: threading.Thread(target=node.reload_roles).start())
    runtime = runtime_record(cfg, node)
    ue, li = runtime["ue"], runtime["li"]
    if worker is None:  # the supervisor of workers writes it for them
        cfg.runtime_file.write_text(json.dumps(runtime) + "\n")
    print(f"UE listener on {ue}", flush=True)
    print(f"LI listener on {li}", flush=True)
    if "ue_http" in runtime:
        print(f"UE HTTPS listener on {runtime['ue_http']}", flush=True)
    if "x1" in runtime:
        print(f"X1 listener on {runtime['x1']}", flush=True)
    stop.wait()
    node.stop(cfg.grace_period)
    if worker is None:
        cfg.runtime_file.unlink(missing_ok=True)
    return 0


def _read_psk(path: str | None) -> bytes:
    if path is None:
        return b""
    text = Path(path).read_text().strip()
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise KmsError("the PSK file must hold the key as hex") from None


def cmd_user(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    if args.action != "list" and _node_running(cfg):
        # The running node is the audit log's only writer: change users through it.
        from firmware.cli_li import user_via_node

        return user_via_node(cfg, args)
    admin, vault, store, audit = open_admin(cfg)
    me = local_operator()
    try:
        if args.action == "add":
            user, generated = admin.put_user(
                me,
                args.identity,
                args.alias or [],
                _read_psk(args.psk_file),
                (args.psk_id or "").encode(),
            )
            print(f"user {user.identity} stored (aliases: {', '.join(user.aliases) or '-'})")
            if generated is not None:
                print(f"generated PSK (shown once): {generated.hex()}")
        elif args.action == "remove":
            admin.delete_user(me, args.identity)
            print(f"user {args.identity} removed")
        else:
            for user in admin.list_users():
                print(
                    f"{user.identity}\taliases={','.join(user.aliases) or '-'}\t"
                    f"kek=v{user.wrapped_psk.kek_version}"
                )
    finally:
        _close(audit, store, vault)
    return 0


def _node_running(cfg: config_mod.Config) -> bool:
    """True when `serve` of this config runs (it records its pid in the runtime file)."""
    try:
        pid = int(json.loads(cfg.runtime_file.read_text())["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError):
        return False
    return True


def cmd_keys(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    if _node_running(cfg):
        # The running node holds session copies of the keys and sweeps retired versions
        # itself: change or read them through it (AdminService), never behind its back.
        from firmware.cli_li import keys_via_node

        return keys_via_node(cfg, args)
    admin, vault, store, audit = open_admin(cfg)
    try:
        if args.action == "rotate":
            view = admin.rotate(local_operator(), KeyName.TICKET_PROTECTION, staged=args.staged)
            print(f"{view.name.value}/v{view.version} {view.state.name}")
        elif args.action == "activate":
            view = admin.activate(local_operator(), KeyName.TICKET_PROTECTION, args.version)
            print(f"{view.name.value}/v{view.version} ACTIVE")
        destroyed = admin.sweep(KeyName.TICKET_PROTECTION)
        for version in destroyed:
            print(f"{KeyName.TICKET_PROTECTION.value}/v{version} destroyed (its tickets expired)")
        if args.action == "list":
            for name in KeyName:
                for v in admin.key_versions(name):
                    created = (
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(v.created))
                        if v.created
                        else "-"
                    )
                    print(f"{name.value}/v{v.version}\t{v.state.name}\tcreated={created}")
    finally:
        _close(audit, store, vault)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kmsnode", description="KMS node for IMS media security")
    sub = parser.add_subparsers(dest="command", required=True)
    cfg = argparse.ArgumentParser(add_help=False)
    cfg.add_argument("--config", default=DEFAULT_CONFIG, help="the node's TOML config")

    p = sub.add_parser("dev-init", help="create a development node (SoftHSM token, keys, PKI)")
    p.add_argument("directory")
    p.add_argument("--ue-port", type=int, default=7443)
    p.add_argument("--li-port", type=int, default=7444)
    p.add_argument("--metrics-port", type=int, default=9464)
    p.add_argument(
        "--ue-http-port", type=int, help="MIKEY over HTTPS (default 7445; any when --ue-port is 0)"
    )
    p.add_argument("--x1-port", type=int, help="X1 (default 7446; any when --li-port is 0)")
    p.set_defaults(func=cmd_dev_init)

    p = sub.add_parser(
        "init-keys",
        help="create the node's keys in the token if missing (first boot)",
        parents=[cfg],
    )
    p.set_defaults(func=cmd_init_keys)

    p = sub.add_parser(
        "dev-node", help="a throw-away node on free loopback ports, removed when it stops"
    )
    p.add_argument("--dir", help="new or empty directory to use (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="print the description as one JSON line")
    p.set_defaults(func=cmd_dev_node)

    p = sub.add_parser("serve", help="run the node", parents=[cfg])
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("user", help="provision users")
    user_sub = p.add_subparsers(dest="action", required=True)
    a = user_sub.add_parser("add", parents=[cfg])
    a.add_argument("identity")
    a.add_argument("--alias", action="append")
    a.add_argument("--psk-file", help="file with the PSK as hex; omitted: the HSM generates one")
    a.add_argument("--psk-id", help="IDRpsk value the UE sends (default: the identity)")
    r = user_sub.add_parser("remove", parents=[cfg])
    r.add_argument("identity")
    user_sub.add_parser("list", parents=[cfg])
    p.set_defaults(func=cmd_user)

    p = sub.add_parser("keys", help="ticket protection key versions")
    keys_sub = p.add_subparsers(dest="action", required=True)
    keys_sub.add_parser("list", parents=[cfg])
    rot = keys_sub.add_parser("rotate", parents=[cfg])
    rot.add_argument(
        "--staged",
        action="store_true",
        help="create the version but do not activate it (a cluster rotation: move it to every"
        " node's HSM with export-wrapped / import-wrapped, then `keys activate`)",
    )
    act = keys_sub.add_parser("activate", parents=[cfg])
    act.add_argument("version", type=int)
    p.set_defaults(func=cmd_keys)
    from firmware.cli_keys import add_commands as add_key_transport

    add_key_transport(keys_sub, cfg)

    from firmware.cli_li import add_commands

    add_commands(sub, cfg)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"kmsnode: configuration error: {exc}", file=sys.stderr)
        return 2
    except KmsError as exc:
        print(f"kmsnode: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"kmsnode: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
