"""`kmsnode dev-node` as a process: what it hands out works, and whatever stops it (SIGTERM,
SIGINT, its parent's death, a stop during set-up) leaves no process and no directory behind;
PINs never reach argv or any output."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from firmware import devnode
from tests.plugin.procs import dev_node, ended_within, gone, kill_stray, read_line

pytestmark = pytest.mark.softhsm


def _channel(doc: dict[str, Any], listener: str, role: str | None) -> grpc.Channel:
    ca = Path(doc["ca"]).read_bytes()
    if role is None:
        creds = grpc.ssl_channel_credentials(ca)
    else:
        c = doc["clients"][role]
        creds = grpc.ssl_channel_credentials(
            ca, Path(c["key"]).read_bytes(), Path(c["cert"]).read_bytes()
        )
    return grpc.secure_channel(doc[f"{listener}_listener"], creds)


def _serving(doc: dict[str, Any], listener: str, role: str | None) -> bool:
    with _channel(doc, listener, role) as ch:
        answer = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def _https_status(doc: dict[str, Any], listener: str, path: str, role: str | None) -> int:
    """The status of an empty text/plain POST to an HTTPS listener (its CA verified)."""
    ctx = ssl.create_default_context(cafile=doc["ca"])
    if role is not None:
        ctx.load_cert_chain(doc["clients"][role]["cert"], doc["clients"][role]["key"])
    port = doc[listener].rpartition(":")[2]
    conn = http.client.HTTPSConnection("localhost", int(port), context=ctx, timeout=30)
    try:
        conn.request("POST", path, body=b"", headers={"Content-Type": "text/plain"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_json_names_everything_a_client_needs_and_sigterm_removes_it_all(tmp_path: Path) -> None:
    directory = tmp_path / "node"
    with dev_node("--dir", str(directory), "--json") as node:
        line = node.line()
        doc = json.loads(line)
        assert doc["pid"] == node.proc.pid and Path(doc["directory"]) == directory
        assert json.loads((directory / "dev-node.json").read_text()) == doc
        assert (directory / "dev-node.json").stat().st_mode & 0o077 == 0
        ue, li = doc["ue_listener"], doc["li_listener"]
        assert ue.startswith("127.0.0.1:") and li.startswith("127.0.0.1:") and ue != li
        assert _serving(doc, "ue", None) and _serving(doc, "li", "admin")
        assert _https_status(doc, "ue_http_listener", "/mikey", None) == 415  # not MIKEY
        assert _https_status(doc, "x1_listener", "/X1/NE", "x1") == 200  # the ADMF's: X1 answers
        assert doc["kms_identity"] == "sip:kms.ims.example.net"
        assert doc["clients"]["df2"]["identity"] == "dns:df2.li.example.net"
        assert all(len(bytes.fromhex(u["psk"])) == 32 for u in doc["users"])
        assert len({u["identity"] for u in doc["users"]}) == 2
        pin = (directory / "softhsm" / "user.pin").read_text().strip()
        cmdline = Path(f"/proc/{doc['pid']}/cmdline").read_bytes()
        code, out, err = node.stop()
    assert code == 0, err.decode()
    assert not directory.exists()
    assert gone(doc["pid"])
    for text in (line, out, err, cmdline):
        assert pin.encode() not in text


def test_sigint_stops_it_too_and_the_readable_output_names_the_json(tmp_path: Path) -> None:
    directory = tmp_path / "node"
    with dev_node("--dir", str(directory)) as node:
        lines = []
        while not lines or not lines[-1].startswith(b"  as JSON"):
            lines.append(node.line())
            assert lines[-1], b"".join(lines)
        text = b"".join(lines).decode()
        doc = json.loads((directory / "dev-node.json").read_text())
        for value in (doc["ue_listener"], doc["li_listener"], doc["ca"], doc["users"][0]["psk"]):
            assert value in text
        code, _, err = node.stop(signal.SIGINT)
    assert code == 0, err.decode()
    assert not directory.exists()


PARENT = """
import subprocess, sys
node = subprocess.Popen(
    [sys.executable, "-m", "firmware.cli", "dev-node", "--json", "--dir", sys.argv[1]],
    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
)
sys.stdout.buffer.write(node.stdout.readline())
sys.stdout.flush()
sys.stdin.read()  # until it is killed
"""


def test_the_node_stops_and_removes_everything_when_its_parent_is_killed(tmp_path: Path) -> None:
    directory = tmp_path / "node"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    pid = None
    try:
        assert parent.stdout is not None
        pid = json.loads(read_line(parent.stdout.fileno()))["pid"]
        assert directory.exists()
        parent.kill()  # SIGKILL: the parent cannot stop the node itself
        parent.wait()
        assert ended_within(pid, 60), "the node outlived its parent"
        assert not directory.exists()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if pid is not None and not gone(pid):
            kill_stray(pid)


def test_a_node_whose_parent_is_already_gone_makes_nothing(tmp_path: Path) -> None:
    """The parent names its pid; a node that finds another parent (the named one died before
    the node watched it) exits at once."""
    directory = tmp_path / "node"
    env = {**os.environ, devnode.PARENT_ENV: str(os.getpid() + 1_000_000)}
    with dev_node("--dir", str(directory), "--json", env=env) as node:
        code, out, err = node.finish()
    assert code == 0, err.decode()
    assert out == b"" and not directory.exists()


def test_a_stop_during_set_up_removes_what_was_made_and_prints_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "node"
    with dev_node("--dir", str(directory), "--json") as node:
        while b"setting up" not in (line := node.log_line()):
            assert line, "dev-node ended before its set-up"
        code, out, err = node.stop()  # the set-up (token, PKI, keys, servers) has begun
    assert code == 0, err.decode()
    assert out == b"", "the node became ready although it was stopped during its set-up"
    assert not directory.exists()


def test_without_dir_it_uses_a_fresh_temporary_directory_and_removes_it(tmp_path: Path) -> None:
    with dev_node("--json", env={**os.environ, "TMPDIR": str(tmp_path)}) as node:
        directory = Path(node.doc()["directory"])
        assert directory.parent == tmp_path and directory.name.startswith("kmsnode-dev-")
        code, _, err = node.stop()
    assert code == 0, err.decode()
    assert list(tmp_path.iterdir()) == []


def test_an_empty_given_dir_is_emptied_but_kept(tmp_path: Path) -> None:
    with dev_node("--dir", str(tmp_path), "--json") as node:
        assert node.doc()["directory"] == str(tmp_path)
        code, _, err = node.stop()
    assert code == 0, err.decode()
    assert tmp_path.is_dir() and list(tmp_path.iterdir()) == []


def test_refuses_a_dir_that_holds_files_and_leaves_them_alone(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("not yours to remove\n")
    with dev_node("--dir", str(tmp_path), "--json") as node:
        code, out, err = node.finish()
    assert code == 2 and out == b""
    assert b"new or empty directory" in err and b"Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_init_token_keeps_the_pins_off_argv_and_the_token_logs_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []
    real = subprocess.Popen

    def recording(args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        seen.append(list(args))
        return real(args, **kw)

    monkeypatch.setattr(subprocess, "Popen", recording)  # hsm.softhsm runs softhsm2-util
    token = devnode.init_token(tmp_path / "softhsm")
    assert seen and all(token.pin not in arg for args in seen for arg in args)
    assert token.pin_file.read_text().strip() == token.pin
    assert token.pin_file.stat().st_mode & 0o077 == 0
    login = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pkcs11, sys; t = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2]);"
            " t.open(user_pin=open(sys.argv[3]).read().strip()).close()",
            token.module_path,
            token.label,
            str(token.pin_file),
        ],
        env=token.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert login.returncode == 0, login.stderr


def test_a_failed_token_init_names_softhsm2_utils_error_but_no_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pins = iter(["a1" * 16, "b2" * 16])
    monkeypatch.setattr(devnode.secrets, "token_hex", lambda _n: next(pins))
    with pytest.raises(Exception, match="softhsm2-util --init-token failed") as failed:
        devnode.init_token(tmp_path / "softhsm", label="x" * 40)  # longer than 32: refused
    message = str(failed.value)
    assert "ERROR" in message
    assert "a1" * 16 not in message and "b2" * 16 not in message
