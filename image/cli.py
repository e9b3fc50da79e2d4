"""The `kmsnode-image` command (console entry point `image.cli:main`; `python -m image` meanwhile).

Rules: every refusal is one line `kmsnode-image: refused: <reason>` with exit status 2; other
failures exit 1; no stack traces, no key material or PINs in any output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    b.add_argument("--key", help="Ed25519 private key (PEM)")
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

    u = sub.add_parser("update", help="install a signed bundle into the inactive slot and switch")
    u.add_argument("--bundle", required=True)
    u.add_argument("--target", required=True)
    u.add_argument("--pubkey", default=DEFAULT_PUBKEY)
    u.add_argument("--product", default=None, help="expected product (default: the installed one)")

    for name, text in (
        ("status", "show the slot record"),
        ("mark-good", "mark the active slot good (raises the rollback floor)"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("--target", required=True)

    k = sub.add_parser(
        "keygen", help="create a development signing key pair (never commit the private key)"
    )
    k.add_argument("--private", required=True)
    k.add_argument("--public", required=True)
    return p


def _run(args: argparse.Namespace) -> int:
    if args.command == "build":
        from dataclasses import replace

        from image.build import build
        from image.config import BuildPaths, ImageConfig

        config = ImageConfig()
        if args.version:
            config = replace(config, version=args.version)
        if args.security_version is not None:
            config = replace(config, security_version=args.security_version)
        cache = Path(args.cache)
        paths = BuildPaths(Path(args.repo), cache, Path(args.out) if args.out else cache / "out")
        out = build(Path(args.repo), paths, config, _signer(args), commit=args.commit)
        m = out.manifest
        print(f"built {m.product} {m.version} (security_version {m.security_version})")
        print(f"disk   {out.disk} ({m.artifacts['disk.img'].size} bytes)")
        print(f"bundle {out.bundle}")
        print(f"root   {m.artifacts['root.img'].size} bytes, verity root hash {m.verity.root_hash}")
        return 0
    if args.command == "keygen":
        from image.manifest import generate_key_files, key_id

        pub = generate_key_files(args.private, args.public)
        print(f"key id {key_id(pub)}")
        return 0
    if args.command in ("status", "mark-good"):
        from image import update

        state = (
            update.status(args.target)
            if args.command == "status"
            else update.mark_good(args.target)
        )
        print(
            f"product {state.product}; active slot {state.active}; "
            f"rollback floor {state.min_security_version}"
        )
        for name, slot in sorted(state.slots.items()):
            print(
                f"slot {name}: {slot.state} {slot.version} "
                f"security_version {slot.security_version} root {slot.root_hash[:16]}"
            )
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

        flash(args.image, args.target, pinned, args.product, args.manifest)
        return 0
    from image.update import update as do_update

    do_update(args.bundle, args.target, pinned, args.product)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (BundleRejected, TargetRefused) as exc:
        print(f"kmsnode-image: refused: {exc}", file=sys.stderr)
        return 2
    except ImageError as exc:
        print(f"kmsnode-image: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"kmsnode-image: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1
