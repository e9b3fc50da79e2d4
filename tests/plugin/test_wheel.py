"""The wheel carries what the plugin needs: built from this tree (as a clean clone of it would
be), installed with its pinned dependencies in a fresh virtualenv, and plugin_tests/ run from a
copy outside the repository with that virtualenv's pytest. Run by `make test-wheel` (part of
`make test`); marked slow so focused `-m "not slow"` runs skip it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.plugin.procs import REPO, count_tests, outside_project, pytest_cmd

pytestmark = [pytest.mark.slow, pytest.mark.wheel, pytest.mark.softhsm]

# What the plugin and the node it starts need from the wheel besides Python modules.
CARRIED = (
    "hsm/data/softhsm2.conf.in",
    "kmsnode_pytest/plugin.py",
    "kmsnode_pytest/py.typed",
    "firmware/devnode.py",
    "firmware/api/proto/kms/v1/kms_pb2.py",
)


def run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 900) -> str:
    out = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, f"{cmd}: {out.stdout}{out.stderr}"
    return out.stdout


def source_tree(dest: Path) -> Path:
    """The repository's files as a clean clone plus uncommitted work would have them (tracked
    and untracked files git does not ignore), so the build never writes into the checkout."""
    listed = run("git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def test_the_wheel_alone_runs_the_plugin_suite_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    tree = source_tree(tmp_path / "src")
    dist = tmp_path / "dist"
    pip = (sys.executable, "-m", "pip")
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, tree)
    (wheel,) = dist.glob("kmsnode-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entries = archive.read(entry_points).decode()
    assert set(CARRIED) <= names, set(CARRIED) - names
    assert re.search(r"\[pytest11\]\nkmsnode = kmsnode_pytest\.plugin\n", entries), entries
    assert not any(n.startswith(("tests/", "plugin_tests/")) for n in names)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    constraints = REPO / "constraints.txt"
    run(python, "-m", "pip", "install", "-q", "-c", constraints, wheel, "pytest")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(
        python,
        "-P",
        "-c",
        "import firmware, kmsnode_pytest, hsm.softhsm as s;"
        " print(firmware.__file__, kmsnode_pytest.__file__, s.TEMPLATE, s.TEMPLATE.is_file())",
        cwd=elsewhere,
    ).split()
    site = str(venv / "lib")
    assert all(path.startswith(site) for path in where[:3]), where
    assert where[3] == "True"

    project = outside_project(tmp_path / "outside")
    out = subprocess.run(
        pytest_cmd(str(python), tmp_path / "bt"),
        cwd=project,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    summary = out.stdout.strip().splitlines()[-1]
    assert re.match(rf"{count_tests(project)} passed in ", summary), summary
