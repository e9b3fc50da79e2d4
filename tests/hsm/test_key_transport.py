"""kmsnode keys transport-key / export-wrapped / import-wrapped between two real SoftHSM tokens
(each CLI call its own process with its own SOFTHSM2_CONF, as two nodes are)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hsm.softhsm import SoftHsmToken, create_token, module_path, write_secret
from tests.hsm.child import run_child
from tests.hsm.psk_check import expected
from tests.hsm.use_keys import PSK

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Node:
    directory: Path
    token: SoftHsmToken

    @property
    def config(self) -> str:
        return str(self.directory / "kmsnode.toml")

    @property
    def so_pin(self) -> str:
        return str(self.directory / "softhsm" / "so.pin")


def kmsnode(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    return subprocess.run(
        [sys.executable, "-m", "firmware.cli", *args],
        cwd=REPO, env=env, text=True, capture_output=True, timeout=300, check=False,
    )  # fmt: skip


def _dev_node(directory: Path, *, empty: bool) -> Node:
    assert kmsnode("dev-init", str(directory), "--ue-port", "0", "--li-port", "0").returncode == 0
    softhsm = directory / "softhsm"
    pin = (softhsm / "user.pin").read_text().strip()
    if empty:  # a new cluster member: a token without node keys of its own
        shutil.rmtree(softhsm)
        create_token(softhsm, "kmsnode", pin, "new-node-so-pin")
        write_secret(softhsm / "so.pin", "new-node-so-pin")
    token = SoftHsmToken(
        directory=softhsm, conf=softhsm / "softhsm2.conf", tokendir=softhsm / "tokens",
        label="kmsnode", pin_file=softhsm / "user.pin", module_path=module_path(), pin=pin,
    )  # fmt: skip
    return Node(directory, token)


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Node, Node, Path, str, str]:
    """Node a's keys moved to node b's empty token: (a, b, file, export out, import out)."""
    base = tmp_path_factory.mktemp("transport")
    a, b = _dev_node(base / "a", empty=False), _dev_node(base / "b", empty=True)
    pub, file = base / "b.pem", base / "keys.json"
    made = kmsnode("keys", "transport-key", "--config", b.config, "--out", str(pub))
    assert made.returncode == 0, made.stderr
    out = kmsnode(
        "keys", "export-wrapped", "--config", a.config, "--recipient", str(pub),
        "--out", str(file), "--so-pin-file", a.so_pin,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    into = kmsnode(
        "keys", "import-wrapped", "--config", b.config, "--in", str(file),
        "--so-pin-file", b.so_pin,
    )  # fmt: skip
    assert into.returncode == 0, into.stderr
    return a, b, file, out.stdout, into.stdout


def _use(node: Node, *args: str) -> dict[str, str]:
    (result,), _ = run_child(node.token, "use_keys", node.token.uri, node.token.module_path, *args)
    assert isinstance(result, dict)
    return result


def test_keys_moved_to_another_hsm_compute_the_same_tickets_audit_and_psks(
    moved: tuple[Node, Node, Path, str, str],
) -> None:
    a, b, _, exported, imported = moved
    on_a = _use(a, "1")
    on_b = _use(b, "1", on_a["wrapped_psk"])
    assert on_b["ticket_hmac"] == on_a["ticket_hmac"] and on_b["ticket_prf"] == on_a["ticket_prf"]
    assert on_b["audit_hmac"] == on_a["audit_hmac"]
    # a user's PSK wrapped by node a computes on node b
    assert on_b["psk_prf"] == b"".join(expected(PSK)).hex()
    for label in ("ticket-protection/v1", "key-encryption/v1", "audit/v1"):
        check = next(ln.split("check=")[1] for ln in exported.splitlines() if ln.startswith(label))
        assert f"{label} imported check={check}" in imported


def test_the_file_names_its_keys_and_recipient_and_holds_no_plaintext(
    moved: tuple[Node, Node, Path, str, str],
) -> None:
    _, _, file, exported, _ = moved
    raw = json.loads(file.read_text())
    assert raw["format"] == "kmsnode-key-transport" and raw["version"] == 1
    assert [k["label"] for k in raw["keys"]] == [
        "ticket-protection/v1", "key-encryption/v1", "audit/v1",
    ]  # fmt: skip
    assert raw["oaep_hash"] == "sha1"  # SoftHSM 2.6 refuses OAEP with SHA-256
    assert raw["recipient"] in exported


def test_importing_again_is_idempotent(moved: tuple[Node, Node, Path, str, str]) -> None:
    _, b, file, _, _ = moved
    again = kmsnode("keys", "import-wrapped", "--config", b.config, "--in", str(file),
                    "--so-pin-file", b.so_pin)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already present") == 3


def test_an_edited_file_is_refused_before_the_hsm_is_asked(
    moved: tuple[Node, Node, Path, str, str], tmp_path: Path
) -> None:
    _, b, file, _, _ = moved
    raw = json.loads(file.read_text())
    raw["keys"][0]["label"], raw["keys"][0]["name"] = "audit/v1", "audit"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(raw))
    refused = kmsnode("keys", "import-wrapped", "--config", b.config, "--in", str(edited),
                      "--so-pin-file", b.so_pin)  # fmt: skip
    assert refused.returncode == 1
    assert "damaged (digest mismatch)" in refused.stderr


def test_a_file_for_another_hsm_is_refused(
    moved: tuple[Node, Node, Path, str, str],
) -> None:
    a, _, file, _, _ = moved
    assert (
        kmsnode("keys", "transport-key", "--config", a.config, "--out", "/dev/null").returncode == 0
    )
    refused = kmsnode("keys", "import-wrapped", "--config", a.config, "--in", str(file),
                      "--so-pin-file", a.so_pin)  # fmt: skip
    assert refused.returncode == 1
    assert "made for another HSM's transport key" in refused.stderr


def test_export_without_the_security_officer_pin_is_refused(
    moved: tuple[Node, Node, Path, str, str], tmp_path: Path
) -> None:
    a, _, file, _, _ = moved
    wrong = tmp_path / "wrong.pin"
    write_secret(wrong, "not-the-so-pin")
    refused = kmsnode(
        "keys", "export-wrapped", "--config", a.config, "--recipient", str(file.parent / "b.pem"),
        "--out", str(tmp_path / "x"), "--so-pin-file", str(wrong),
    )  # fmt: skip
    assert refused.returncode == 1 and "not-the-so-pin" not in refused.stderr
    assert "refused the security officer login" in refused.stderr


def test_a_running_node_uses_a_version_imported_after_it_started(
    moved: tuple[Node, Node, Path, str, str], tmp_path: Path
) -> None:
    """Rotation in a cluster: a TPK version made on node a and imported into node b's token
    while b's vault is open is found by b's next request for it (no restart), and computes what
    a computes."""
    a, b, _, _, _ = moved
    (made,), _ = run_child(a.token, "later_version", "create", a.token.uri, a.token.module_path)
    version = made["version"]
    waiting = subprocess.Popen(
        [sys.executable, "-m", "tests.hsm.later_version", "await", b.token.uri,
         b.token.module_path],
        cwd=REPO, env=b.token.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert waiting.stdout is not None and waiting.stdin is not None
        assert json.loads(waiting.stdout.readline()) == {"ready": True}
        pub, file = tmp_path / "b.pem", tmp_path / "v2.json"
        assert kmsnode("keys", "transport-key", "--config", b.config, "--out",
                       str(pub)).returncode == 0  # fmt: skip
        out = kmsnode(
            "keys", "export-wrapped", "--config", a.config, "--recipient", str(pub),
            "--out", str(file), "--so-pin-file", a.so_pin,
            "--key", f"ticket-protection/v{version}",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        into = kmsnode("keys", "import-wrapped", "--config", b.config, "--in", str(file),
                       "--so-pin-file", b.so_pin)  # fmt: skip
        assert into.returncode == 0, into.stderr
        waiting.stdin.write(f"{version}\n")
        waiting.stdin.flush()
        answer = json.loads(waiting.stdout.readline())
    finally:
        waiting.kill()
        waiting.wait(timeout=60)
    assert answer == {"ticket_hmac": _use(a, str(version))["ticket_hmac"]}
