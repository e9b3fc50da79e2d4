"""Processes of the plugin tests: bounded reads of a child's output and bounded waits for a
process that is not our child to end (pidfd), so nothing sleeps or polls."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEADLINE = 120.0  # a node's set-up (about 3 s here) on a loaded 2-core machine, with margin


def read_line(fd: int, timeout: float = DEADLINE) -> bytes:
    """One line from `fd` (b"" at end of file); AssertionError after `timeout` s."""
    end = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(end - time.monotonic(), 0.0))
        assert ready, f"no line within {timeout} s (so far {data!r})"
        byte = os.read(fd, 1)  # one byte at a time: what follows the line stays in the pipe
        if not byte:
            return data
        data += byte
    return data


def ended_within(pid: int, timeout: float) -> bool:
    """Whether process `pid` (any process, child or not) has exited within `timeout` s."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def gone(pid: int) -> bool:
    """No process `pid` (or only a zombie no one has reaped yet)."""
    return ended_within(pid, 0.0)


def kill_stray(pid: int) -> None:
    """Clean-up of a failed test: end a node the test expected to have ended itself."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class DevNode:
    """A running `kmsnode dev-node` (see `dev_node`)."""

    proc: subprocess.Popen[bytes]

    def line(self) -> bytes:
        assert self.proc.stdout is not None
        return read_line(self.proc.stdout.fileno())

    def doc(self) -> dict[str, Any]:
        """The --json description (its first stdout line)."""
        return dict(json.loads(self.line()))

    def log_line(self) -> bytes:
        assert self.proc.stderr is not None
        return read_line(self.proc.stderr.fileno())

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, bytes, bytes]:
        self.proc.send_signal(signum)
        return self.finish()

    def finish(self, timeout: float = 60.0) -> tuple[int, bytes, bytes]:
        """Exit code and the rest of stdout and stderr, bounded (killed after `timeout` s)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(f"still running after {timeout} s; killed") from None
        return self.proc.returncode, out, err


@contextlib.contextmanager
def dev_node(*args: str, env: dict[str, str] | None = None) -> Iterator[DevNode]:
    """`kmsnode dev-node ARGS` with piped stdout and stderr; killed if a test leaves it running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware.cli", "dev-node", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        yield DevNode(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("probe_session.py")


def outside_project(tmp_path: Path, probe: bool = False) -> Path:
    """A copy of plugin_tests/ in `tmp_path/project` (with `probe`: the session probe only)."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "plugin_tests", project, ignore=shutil.ignore_patterns("__pycache__"))
    if probe:  # the probe alone: the suite's other tests would only slow the session down
        for test in project.glob("test_*.py"):
            test.unlink()
        shutil.copy(PROBE, project / "test_probe.py")
    return project


def count_tests(project: Path) -> int:
    """The test functions of the project's test files."""
    return sum(
        isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        for path in project.glob("test_*.py")
        for node in ast.parse(path.read_text()).body
    )


def pytest_cmd(python: str, basetemp: Path) -> list[str]:
    """pytest of interpreter `python`, run from the project's directory."""
    return [python, "-m", "pytest", "-q", "--basetemp", str(basetemp)]
