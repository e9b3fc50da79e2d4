"""Build hook: the MIKEY codec's hot modules compiled with mypyc, or the pure-Python package.

Rules:
- ``KMSNODE_MYPYC`` selects the codec: unset or ``0`` builds pure Python (the default, and what
  ``pip install -e`` gives the development venv: the sources are the code under test);
  ``auto`` compiles when mypyc, a C compiler and the Python headers are present and otherwise
  builds pure Python with one line on stderr saying what was missing (``make wheel``); ``1``
  compiles or fails the build (a release must not ship the fallback by accident).
- The modules compiled are ``[tool.kmsnode] mypyc`` in pyproject.toml (the tests read the same
  list to prove which build they ran against); all other modules stay Python, and every
  compiled module's ``.py`` stays in the wheel beside its extension (the extension is imported).
- Reproducible: the shared library is named after the group (no hash of the module list) and
  the build directory is mapped out of the debug info (``-ffile-prefix-map``), so the same
  sources and compiler give the same wheel wherever they are built.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tomllib
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    with open(HERE / "pyproject.toml", "rb") as f:
        modules: list[str] = tomllib.load(f)["tool"]["kmsnode"]["mypyc"]
    return modules


def missing() -> str | None:
    """What a mypyc build lacks here, or None."""
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed (pip install mypy)"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (apt-get install python3-dev)"
    return None


def ext_modules() -> list[object]:
    mode = os.environ.get("KMSNODE_MYPYC", "0")
    if mode not in ("0", "auto", "1"):
        sys.exit(f"KMSNODE_MYPYC must be 0, auto or 1, not {mode!r}")
    if mode == "0":
        return []
    why = missing()
    if why is not None:
        if mode == "1":
            sys.exit(f"KMSNODE_MYPYC=1 but {why}")
        print(f"kmsnode: building the pure-Python codec: {why}", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    flags = f"-ffile-prefix-map={HERE}=."
    os.environ["CFLAGS"] = f"{os.environ.get('CFLAGS', '')} {flags}".strip()
    paths = [f"{m.replace('.', '/')}.py" for m in compiled_modules()]
    return list(mypycify(paths, opt_level="3", group_name="kmsnode_mikey"))


setup(ext_modules=ext_modules())
