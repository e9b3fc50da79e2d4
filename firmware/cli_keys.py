"""`kmsnode keys transport-key / export-wrapped / import-wrapped`: moving key versions between a
cluster's HSMs under a key-transport key (hsm/transport.py has the protocol and its rules).

Rules:
- PINs never on argv: the user PIN comes from the config as for every command; the security
  officer's PIN from --so-pin-file (a file, mode 0600) or --so-pin-credential (systemd).
- Output names labels, versions, check values and the recipient fingerprint, never key material;
  the operator compares the check values printed by export and import (out of band) before
  activating a version: the recipient's public key is public, so the file's origin is vouched for
  by whoever runs the import, not by the file.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from firmware import config as config_mod
from firmware.core.errors import ConfigError
from hsm.pin import PinSource


def _so_pin(args: argparse.Namespace) -> PinSource:
    if (args.so_pin_file is None) == (args.so_pin_credential is None):
        raise ConfigError("give exactly one of --so-pin-file and --so-pin-credential")
    if args.so_pin_file is not None:
        return PinSource.file(args.so_pin_file)
    return PinSource.credential(args.so_pin_credential)


def _vault(args: argparse.Namespace) -> Any:
    from firmware.node import open_vault

    return open_vault(config_mod.load(args.config), monitor=False)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def cmd_transport_key(args: argparse.Namespace) -> int:
    from hsm.transport import fingerprint, transport_key

    with _vault(args) as vault:
        pem = transport_key(vault)
    _write(args.out, pem.decode())
    print(f"transport key {fingerprint(pem)} written to {args.out}")
    return 0


def cmd_export_wrapped(args: argparse.Namespace) -> int:
    from hsm import bundle
    from hsm.transport import export_wrapped, prepare_export

    pem = Path(args.recipient).read_bytes()
    vault = _vault(args)
    try:
        vault.close()  # one login type per process: the SO step runs logged out of the vault
        prepare_export(vault, _so_pin(args), pem)
        vault.start(monitor=False)
        exported = export_wrapped(vault, pem, frozenset(args.key) if args.key else None)
    finally:
        vault.close()
    _write(args.out, bundle.dumps(exported.bundle))
    for label in exported.skipped:
        print(f"{label} skipped: made before key transport, it cannot leave its HSM")
    for k in exported.bundle.keys:
        print(f"{k.label} exported check={k.check.hex()}")
    print(f"for recipient {exported.bundle.recipient}: {args.out}")
    return 0


def cmd_import_wrapped(args: argparse.Namespace) -> int:
    from hsm import bundle
    from hsm.transport import import_wrapped, vouch_for

    parsed = bundle.loads(Path(args.input).read_text(encoding="utf-8"))
    vault = _vault(args)
    try:
        vault.close()
        vouch_for(vault, _so_pin(args), parsed)
        vault.start(monitor=False)
        done = import_wrapped(vault, parsed)
        vault.refresh()  # the same load check a starting node runs, over the whole token
    finally:
        vault.close()
    checks = {k.label: k.check.hex() for k in parsed.keys}
    for label, what in done:
        print(f"{label} {what} check={checks[label]}")
    return 0


def add_commands(keys_sub: Any, cfg: argparse.ArgumentParser) -> None:
    """The key transport subcommands of `kmsnode keys`."""
    so = argparse.ArgumentParser(add_help=False)
    so.add_argument("--so-pin-file", help="file holding the token's security officer PIN")
    so.add_argument("--so-pin-credential", help="systemd credential holding the SO PIN")

    p = keys_sub.add_parser(
        "transport-key",
        parents=[cfg],
        help="make (once) this HSM's RSA-3072 key-transport key pair; write its public half",
    )
    p.add_argument("--out", required=True, help="PEM file for the public key")
    p.set_defaults(func=cmd_transport_key)

    p = keys_sub.add_parser(
        "export-wrapped",
        parents=[cfg, so],
        help="wrap every movable key version for the HSM whose transport key is --recipient",
    )
    p.add_argument("--recipient", required=True, help="the recipient's transport key (PEM)")
    p.add_argument("--out", required=True, help="the key transport file to write")
    p.add_argument(
        "--key", action="append", help="only this version (label, e.g. ticket-protection/v2)"
    )
    p.set_defaults(func=cmd_export_wrapped)

    p = keys_sub.add_parser(
        "import-wrapped", parents=[cfg, so], help="unwrap a key transport file into this HSM"
    )
    p.add_argument("--in", dest="input", required=True, help="the key transport file")
    p.set_defaults(func=cmd_import_wrapped)
