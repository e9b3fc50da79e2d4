"""The `kmsnode-image` command (console entry point `image.cli:main`; `python -m image` meanwhile).

Rules: every refusal is one line `kmsnode-image: refused: <reason>` with exit status 2; other
failures exit 1; SIGINT/SIGTERM print one line saying what state the target was left in (exit
130); no stack traces, no key material or PINs in any output.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from image.errors import BundleRejected, ImageError, TargetRefused

DEFAULT_PUBKEY = "/usr/share/kmsnode/update-keys/release.pub"


def _signer(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    if args.pkcs11_module:
        from image.p11sign import Pkcs11Signer

        if not (args.pkcs11_token and args.pkcs11_key and args.pkcs11_pin_file):
            raise ImageError(
                "--pkcs11-module needs --pkcs11-token, --pkcs11-key and --pkcs11-pin-file"
            )
        return Pkcs11Signer(
            args.pkcs11_module, args.pkcs11_token, args.pkcs11_key, Path(args.pkcs11_pin_file)
        )
    if not args.key:
        raise ImageError("a signing key is required: --key FILE or --pkcs11-module ...")
    from image.manifest import FileSigner

    return FileSigner.load(args.key)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kmsnode-image", description="Build, flash and update the kmsnode appliance image"
    )
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser(
        "build", help="build root, verity, signed manifest, disk image and update bundle"
    )
    b.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
    b.add_argument("--cache", default="/var/cache/kmsnode-image")
    b.add_argument("--out", default=None, help="output directory (default CACHE/out)")
    b.add_argument("--commit", default="HEAD", help="git revision to build (never the dirty tree)")
    b.add_argument("--version", default=None)
    b.add_argument("--security-version", type=int, default=None)
    b.add_argument(
        "--source-date-epoch",
        type=int,
        default=None,
        help="timestamp for every file (default: the commit time)",
    )
    b.add_argument("--key", help="Ed25519 release signing key (PEM)")
    b.add_argument("--sb-key", required=True, help="Secure Boot db private key (PEM)")
    b.add_argument("--sb-cert", required=True, help="Secure Boot db certificate (PEM)")
    b.add_argument(
        "--variant",
        choices=("production", "test"),
        default="production",
        help="test: the image provisions itself from a throw-away CA (never ship it)",
    )
    b.add_argument(
        "--insecure-no-tpm",
        action="store_true",
        help="state partition unencrypted, PIN sealed with a host key (test rigs without a TPM)",
    )
    b.add_argument("--extra-tree", help="folder copied over the root last (test fixtures)")
    b.add_argument("--from-lock", help="rebuild from a packages.lock of an earlier build")
    b.add_argument("--pkcs11-module")
    b.add_argument("--pkcs11-token")
    b.add_argument("--pkcs11-key")
    b.add_argument("--pkcs11-pin-file")

    f = sub.add_parser("flash", help="verify and write a disk image to a device or file")
    f.add_argument("--image", required=True)
    f.add_argument("--target", required=True)
    f.add_argument(
        "--manifest", help="manifest.json (default: next to the image; signature is manifest.sig)"
    )
    f.add_argument("--pubkey", default=DEFAULT_PUBKEY, help="pinned release public key (PEM)")
    f.add_argument("--product", default="kmsnode")
    f.add_argument(
        "--wipe-state",
        action="store_true",
        help="overwrite a disk that holds an installed appliance and its sealed state",
    )

    u = sub.add_parser("update", help="install a signed bundle into the inactive slot and switch")
    u.add_argument("--bundle", required=True)
    u.add_argument("--target", required=True)
    u.add_argument("--pubkey", default=DEFAULT_PUBKEY)
    u.add_argument("--product", default=None, help="expected product (default: the installed one)")
    u.add_argument("--tries", type=int, default=3, help="boot tries before automatic fallback")

    for name, text in (
        ("status", "show the slot record"),
        ("mark-good", "mark the booted slot good (raises the rollback floor)"),
        ("fallback", "give up the booted slot: the other good slot boots next"),
    ):
        s = sub.add_parser(name, help=text)
        t = s.add_mutually_exclusive_group(required=True)
        t.add_argument("--target")
        t.add_argument("--boot-disk", action="store_true", help="the disk this system booted from")
        s.add_argument("--report", action="store_true", help="also list failed units")

    sub.add_parser("node-init", help="(appliance) first boot: token, keys, sealed PIN, CSR")
    ti = sub.add_parser("token-init", help=argparse.SUPPRESS)
    ti.add_argument("--module", required=True)
    ti.add_argument("--label", required=True)
    pr = sub.add_parser("provision", help="(appliance) install certificate chain, CA and roles")
    pr.add_argument("--chain", help="PEM: the node's certificate, then its issuers")
    pr.add_argument("--ca", help="PEM: the CA of the LI clients (DF2, admin)")
    pr.add_argument("--roles", help="TOML: [node] kms_identity, [roles], optional [policy]")
    pr.add_argument("--from-credentials", action="store_true")
    h = sub.add_parser("health", help="(appliance) wait until the node answers SERVING")
    h.add_argument("--config", required=True)
    h.add_argument("--timeout", type=float, default=150.0)
    h.add_argument("--reboot-on-failure", action="store_true")
    fw = sub.add_parser("firewall", help="(appliance) nftables ruleset for the listeners")
    fw.add_argument("--config", required=True)
    fw.add_argument("--apply", action="store_true")

    k = sub.add_parser(
        "keygen", help="create a development signing key pair (never commit the private key)"
    )
    k.add_argument("--private", required=True)
    k.add_argument("--public", required=True)
    k.add_argument(
        "--secureboot",
        action="store_true",
        help="a Secure Boot db key (RSA, X.509 certificate as --public) instead of Ed25519",
    )
    return p


SAFE_STATE = {
    "flash": "the target has no valid partition table until it is flashed again",
    "update": "the running slot is untouched; the slot being written is not bootable",
    "build": "nothing was published; the next build starts over",
}


class Interrupted(Exception):
    pass


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _run(args: argparse.Namespace) -> int:
    if args.command == "build":
        from dataclasses import replace

        from image.build import build, commit_time, git_commit
        from image.config import BuildPaths, ImageConfig
        from image.secureboot import SecureBootKey

        repo = Path(args.repo)
        sha = git_commit(repo, args.commit)
        config = ImageConfig(
            source_date_epoch=(
                args.source_date_epoch
                if args.source_date_epoch is not None
                else commit_time(repo, sha)
            ),
            variant=args.variant,
            insecure_no_tpm=args.insecure_no_tpm,
            extra_tree=args.extra_tree,
        )
        if args.version:
            config = replace(config, version=args.version)
        if args.security_version is not None:
            config = replace(config, security_version=args.security_version)
        cache = Path(args.cache)
        paths = BuildPaths(repo, cache, Path(args.out) if args.out else cache / "out")
        out = build(
            repo,
            paths,
            config,
            _signer(args),
            SecureBootKey(Path(args.sb_key), Path(args.sb_cert)),
            commit=sha,
            lock=Path(args.from_lock) if args.from_lock else None,
        )
        m = out.manifest
        print(f"built {m.product} {m.version} (security_version {m.security_version})")
        print(f"disk   {out.disk} ({m.artifacts['disk.img'].size} bytes)")
        print(f"bundle {out.bundle}")
        print(f"root   {m.artifacts['root.img'].size} bytes, verity root hash {m.verity.root_hash}")
        return 0
    if args.command == "keygen":
        if args.secureboot:
            from image.secureboot import generate

            generate(Path(args.private), Path(args.public))
            print(f"Secure Boot db certificate {args.public} (enrol it in the machine's db)")
            return 0
        from image.manifest import generate_key_files, key_id

        pub = generate_key_files(args.private, args.public)
        print(f"key id {key_id(pub)}")
        return 0
    if args.command == "token-init":
        from image.p11init import main as token_init

        return token_init(args.module, args.label)
    if args.command in ("node-init", "provision", "health", "firewall"):
        return _appliance(args)
    if args.command in ("status", "mark-good", "fallback"):
        from image import update
        from image.target import boot_disk

        target = boot_disk() if args.boot_disk else args.target
        verb = {"status": update.status, "mark-good": update.mark_good}.get(
            args.command, update.fallback
        )
        state = verb(target)
        print(
            f"product {state.product}; active slot {state.active}; "
            f"rollback floor {state.min_security_version}"
        )
        for name, slot in sorted(state.slots.items()):
            print(
                f"slot {name}: {slot.state} {slot.version} "
                f"security_version {slot.security_version} root {slot.root_hash[:16]}"
            )
        if args.report:
            _report_failed_units()
        return 0
    from image.manifest import load_public_key

    try:
        pinned = load_public_key(args.pubkey)
    except OSError as exc:
        raise TargetRefused(
            f"cannot read pinned public key {args.pubkey}: {exc.strerror}"
        ) from None
    if args.command == "flash":
        from image.flash import flash

        flash(
            args.image, args.target, pinned, args.product, args.manifest, wipe_state=args.wipe_state
        )
        return 0
    from image.update import update as do_update

    do_update(args.bundle, args.target, pinned, args.product, tries=args.tries)
    return 0


def _appliance(args: argparse.Namespace) -> int:
    from image import appliance

    if args.command == "node-init":
        return appliance.node_init()
    if args.command == "health":
        return appliance.health(Path(args.config), args.timeout, args.reboot_on_failure)
    if args.command == "firewall":
        return appliance.firewall(Path(args.config), args.apply)
    if args.from_credentials:
        return appliance.provision_from_credentials()
    if not (args.chain and args.ca and args.roles):
        raise TargetRefused("provision needs --chain, --ca and --roles (or --from-credentials)")
    return appliance.provision(
        Path(args.chain).read_bytes(), Path(args.ca).read_bytes(), Path(args.roles).read_text()
    )


def _report_failed_units() -> None:
    import subprocess

    proc = subprocess.run(
        ["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"],
        capture_output=True,
        text=True,
    )
    units = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    print(f"KMSNODE-FAILED-UNITS: {' '.join(units) if units else 'none'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(args)
    except (Interrupted, KeyboardInterrupt) as exc:
        state = SAFE_STATE.get(args.command, "nothing further was changed")
        print(f"kmsnode-image: interrupted ({exc or 'SIGINT'}): {state}", file=sys.stderr)
        return 130
    except (BundleRejected, TargetRefused) as exc:
        print(f"kmsnode-image: refused: {exc}", file=sys.stderr)
        return 2
    except ImageError as exc:
        print(f"kmsnode-image: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"kmsnode-image: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
