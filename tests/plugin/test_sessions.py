"""The plugin in pytest sessions of an outside project (a copy of plugin_tests/, outside this
repository, in this virtualenv): its suite passes; teardown leaves no node process and no node
directory (checked by pid and path); two sessions at once get their own nodes and ports; a
session killed mid-test still leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.plugin.procs import (
    count_tests,
    ended_within,
    gone,
    kill_stray,
    outside_project,
    pytest_cmd,
    read_line,
)

pytestmark = pytest.mark.softhsm


def test_the_plugin_suite_passes_in_an_outside_project(tmp_path: Path) -> None:
    project = outside_project(tmp_path)
    # A CI proxy must not catch loopback gRPC (channels are made with enable_http_proxy 0).
    dead_proxy = {"grpc_proxy": "http://127.0.0.1:9", "no_grpc_proxy": "", "no_proxy": ""}
    out = subprocess.run(
        pytest_cmd(sys.executable, tmp_path / "bt"),
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **dead_proxy},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    summary = out.stdout.strip().splitlines()[-1]
    assert re.match(rf"{count_tests(project)} passed in ", summary), summary
    log = next((tmp_path / "bt").glob("kms-node*/dev-node.log"))
    assert not (log.parent / "node").exists()


@dataclass
class Session:
    """An outside project's pytest session running the probe."""

    proc: subprocess.Popen[bytes]
    report: int
    go: int
    output: Path

    def node(self) -> dict[str, Any]:
        line = read_line(self.report)
        assert line, f"the session ended before its node was up: {self.output.read_text()}"
        return dict(json.loads(line))

    def say_go(self) -> None:
        os.write(self.go, b"g")

    def finish(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"session still running: {self.output.read_text()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.report)
        os.close(self.go)


def start_session(tmp_path: Path, name: str) -> Session:
    base = tmp_path / name
    base.mkdir()
    project = outside_project(base, probe=True)
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    output = base / "pytest.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            pytest_cmd(sys.executable, base / "bt"),
            cwd=project,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(report_w, go_r),
            env={**os.environ, "PROBE_REPORT": str(report_w), "PROBE_GO": str(go_r)},
        )
    os.close(report_w)
    os.close(go_r)
    return Session(proc, report_r, go_w, output)


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[list[Session]]:
    started: list[Session] = []
    try:
        yield started
    finally:
        for s in started:
            s.close()


def test_two_sessions_at_once_get_their_own_nodes_and_ports_and_leave_nothing(
    tmp_path: Path, sessions: list[Session]
) -> None:
    sessions += [start_session(tmp_path, "a"), start_session(tmp_path, "b")]
    nodes = [s.node() for s in sessions]
    try:
        a, b = nodes
        assert a["pid"] != b["pid"] and a["directory"] != b["directory"]
        ports = {n[k].rpartition(":")[2] for n in nodes for k in ("ue", "li")}
        assert len(ports) == 4
        assert not gone(a["pid"]) and not gone(b["pid"])  # both up at the same time
        for s in sessions:
            s.say_go()  # each session checks its node still serves, then ends
        outcomes = [s.finish() for s in sessions]
        assert outcomes == [0, 0], [s.output.read_text() for s in sessions]
        for n in nodes:
            assert gone(n["pid"]), f"node {n['pid']} outlived its session"
            assert not Path(n["directory"]).exists()
    finally:
        for n in nodes:
            if not gone(n["pid"]):
                kill_stray(n["pid"])


def test_a_session_killed_mid_test_leaves_no_node_and_no_token_behind(
    tmp_path: Path, sessions: list[Session]
) -> None:
    session = start_session(tmp_path, "killed")
    sessions.append(session)
    node = session.node()
    try:
        assert Path(node["directory"], "softhsm", "tokens").is_dir()
        session.proc.send_signal(signal.SIGKILL)  # no teardown runs in the session
        session.proc.wait()
        assert ended_within(node["pid"], 60), "the node outlived its killed session"
        assert not Path(node["directory"]).exists()
    finally:
        if not gone(node["pid"]):
            kill_stray(node["pid"])
