"""Which codec build this run tests: the pure-Python sources (``make test``) or the mypyc-compiled
wheel (``make test-compiled`` sets ``KMSNODE_EXPECT_CODEC=compiled``). The modules are the list
setup.py compiles (``[tool.kmsnode] mypyc`` in pyproject.toml). A stale extension beside the
sources, or a compiled run that silently imported the sources, fails here.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import tomllib
from pathlib import Path

import firmware.mikey

ROOT = Path(__file__).resolve().parents[2]
EXTENSIONS = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def compiled_list() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        modules: list[str] = tomllib.load(f)["tool"]["kmsnode"]["mypyc"]
    return modules


def test_the_codec_modules_loaded_are_the_build_this_run_expects() -> None:
    expected = os.environ.get("KMSNODE_EXPECT_CODEC", "pure")
    assert expected in ("pure", "compiled")
    modules = compiled_list()
    assert "firmware.mikey.wire" in modules and "firmware.mikey.buffer" in modules
    package = Path(firmware.mikey.__file__).parent
    for name in modules:
        file = importlib.import_module(name).__file__
        assert file is not None and Path(file).parent == package
        if expected == "compiled":
            assert file.endswith(EXTENSIONS), f"{name} was imported from {file}"
        else:
            assert file.endswith(".py"), f"{name} was imported from {file}"


def test_the_modules_left_out_of_the_build_are_python_in_both_runs() -> None:
    compiled = set(compiled_list())
    package = Path(firmware.mikey.__file__).parent
    for source in package.glob("*.py"):
        name = f"firmware.mikey.{source.stem}" if source.stem != "__init__" else "firmware.mikey"
        if name not in compiled:
            file = importlib.import_module(name).__file__
            assert file is not None and file.endswith(".py"), f"{name} was imported from {file}"
