"""Regenerate the committed Python code for protos/ (one command: `make proto`).

Rules: the generated modules live in firmware/api/proto/ and import each other through the
`firmware.api.proto` package, so nothing outside the three import packages has to be on sys.path.
`--check` regenerates into a temporary directory and exits 1 when the committed files differ.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "firmware" / "api" / "proto"
PACKAGE = "firmware.api.proto"
SOURCES = ["kms/v1/kms.proto"]


def generate(out: Path) -> list[Path]:
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={Path(sys.executable).parent / 'protoc-gen-mypy'}",
        f"--mypy_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={Path(sys.executable).parent / 'protoc-gen-mypy_grpc'}",
        f"--mypy_grpc_out={out}",
        *SOURCES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    files: list[Path] = []
    for path in sorted(out.rglob("*.py*")):
        text = path.read_text()
        text = re.sub(r"^from kms\.v1 import", f"from {PACKAGE}.kms.v1 import", text, flags=re.M)
        text = re.sub(r"^import kms\.v1\.", f"import {PACKAGE}.kms.v1.", text, flags=re.M)
        path.write_text(text)
        files.append(path)
    for directory in {p.parent for p in files} | {out / "kms"}:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text("")
            files.append(init)
    doc = '"""Generated protobuf code; regenerate with `make proto`."""\n'
    (out / "__init__.py").write_text(doc)
    files.append(out / "__init__.py")
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when committed code is stale")
    args = parser.parse_args()
    if not args.check:
        if OUT.exists():
            shutil.rmtree(OUT)
        OUT.mkdir(parents=True)
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        stale = []
        for path in generate(fresh):
            rel = path.relative_to(fresh)
            committed = OUT / rel
            if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
                stale.append(str(rel))
        if stale:
            print("generated protobuf code is stale; run `make proto`: " + ", ".join(stale))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
