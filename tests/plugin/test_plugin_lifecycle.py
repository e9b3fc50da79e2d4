"""The plugin's side of the node's lifecycle: a node that is not ready in time is stopped and its
directory removed; `stop` fails loudly when the node did not exit 0, left its directory behind,
or had to be killed. Stand-in processes play the misbehaving node (logic, not the node)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kmsnode_pytest import node as node_mod
from kmsnode_pytest.node import KmsNode, NodeError
from tests.plugin.procs import gone, read_line

DOC: dict[str, Any] = {
    "pid": 0,
    "directory": "",
    "config": "kmsnode.toml",
    "kms_identity": "sip:kms.ims.example.net",
    "ue_listener": "127.0.0.1:1",
    "li_listener": "127.0.0.1:2",
    "ca": "ca.pem",
    "clients": {},
    "users": [],
}


def stand_in(tmp_path: Path, on_sigterm: str) -> KmsNode:
    """A KmsNode whose process runs `on_sigterm` when it gets SIGTERM (after it said "up")."""
    code = (
        "import signal, sys\n"
        f"signal.signal(signal.SIGTERM, lambda *_: {on_sigterm})\n"
        "print('up', flush=True)\n"
        "while True: signal.pause()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert read_line(proc.stdout.fileno()) == b"up\n"  # its handler is in place
    directory = tmp_path / "node"
    directory.mkdir()
    doc = {**DOC, "pid": proc.pid, "directory": str(directory)}
    return KmsNode.from_description(proc, doc, tmp_path / "dev-node.log", 0.0)


def test_stop_fails_when_the_node_leaves_its_directory_behind(tmp_path: Path) -> None:
    node = stand_in(tmp_path, "sys.exit(0)")
    with pytest.raises(NodeError, match=r"left .* behind"):
        node.stop()
    assert gone(node.pid)


def test_stop_fails_when_the_node_exits_with_an_error(tmp_path: Path) -> None:
    node = stand_in(tmp_path, "sys.exit(3)")
    with pytest.raises(NodeError, match="exited with 3"):
        node.stop()


def test_stop_kills_a_node_that_ignores_sigterm_and_removes_its_directory(tmp_path: Path) -> None:
    node = stand_in(tmp_path, "None")
    with pytest.raises(NodeError, match="did not stop within"):
        node.stop(timeout=0.5)
    assert gone(node.pid)
    assert not node.directory.exists()


def test_a_node_not_ready_in_time_is_stopped_and_its_directory_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def recording(*args: Any, **kw: Any) -> subprocess.Popen[bytes]:
        started.append(real(*args, **kw))
        return started[-1]

    monkeypatch.setattr(node_mod.subprocess, "Popen", recording)
    with pytest.raises(NodeError, match="not ready within"):
        KmsNode.start(tmp_path, timeout=0.0)
    (proc,) = started
    assert proc.poll() is not None
    assert not (tmp_path / "node").exists()
    assert proc.args[:3] == [sys.executable, "-P", "-m"]  # type: ignore[index]


def test_the_node_is_told_its_parent_and_ignores_a_firmware_folder_where_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pid lets dev-node see a parent that died before it watched it; `-P` keeps a
    `firmware/` folder in the working directory from being imported instead of the package."""
    (tmp_path / "firmware").mkdir()
    (tmp_path / "firmware" / "__init__.py").write_text("raise SystemExit('the wrong firmware')\n")
    envs: list[dict[str, str]] = []
    real = subprocess.Popen

    def recording(*args: Any, **kw: Any) -> subprocess.Popen[bytes]:
        envs.append(kw["env"])
        return real(*args, **kw)

    monkeypatch.setattr(node_mod.subprocess, "Popen", recording)
    node = KmsNode.start(tmp_path)
    try:
        assert node.health("ue")
    finally:
        node.stop()
    assert envs[0]["KMSNODE_DEV_NODE_PARENT"] == str(os.getpid())


def test_a_node_that_exits_before_it_is_ready_is_reported_with_its_log(tmp_path: Path) -> None:
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "mine").write_text("dev-node refuses a directory that holds files")
    with pytest.raises(NodeError, match="exited with 2 before it was ready") as failed:
        KmsNode.start(tmp_path)
    assert "new or empty directory" in str(failed.value)
    assert (tmp_path / "node" / "mine").is_file()


def test_the_description_the_node_prints_becomes_typed_accessors(tmp_path: Path) -> None:
    doc = {
        **DOC,
        "pid": 4242,
        "directory": str(tmp_path),
        "clients": {"df2": {"cert": "d.pem", "key": "d.key", "identity": "dns:df2.example"}},
        "users": [{"identity": "sip:a@x", "psk": "00" * 32}, {"identity": "sip:b@x", "psk": ""}],
    }
    node = KmsNode.from_description(None, json.loads(json.dumps(doc)), tmp_path / "l", 1.5)  # type: ignore[arg-type]
    assert node.client("df2").cert == Path("d.pem") and node.users[0].psk == bytes(32)
    assert "00" * 32 not in repr(node)
    with pytest.raises(KeyError, match="no client certificate for 'admin'"):
        node.client("admin")
