"""The `kmsnode` command: the composition root (the only module that wires api, hsm and store).

Rules: PINs are read from files or systemd credentials named in the config, never from argv; errors
are printed as one line without a stack trace and exit non-zero.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kmsnode", description="KMS node for IMS media security")
    parser.add_subparsers(dest="command", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
