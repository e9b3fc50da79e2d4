"""A key planted in the token that breaks its template: the vault, hence the node, refuses to start.

Each case plants one key in a fresh throw-away token in a child process (tests/hsm/plant_key.py)
and opens a vault there; the refusal must name the label and the attribute. The session token is
never touched by a planted key (every later load of it would refuse).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hsm.softhsm import SoftHsmToken, create_token, module_path
from tests.hsm.child import REPO, run_child

pytestmark = pytest.mark.softhsm

PIN, SO_PIN = "plant-user-pin-3318", "plant-so-pin-9046"


def _plant(token: SoftHsmToken, case: str, *, then_open: bool = True) -> list[dict[str, object]]:
    args = [case, token.uri, token.module_path] + (["--open"] if then_open else [])
    results, everything = run_child(token, "plant_key", *args)
    for secret in (PIN, SO_PIN):
        assert secret not in everything
    return results


def _refusal(tmp_path: Path, case: str) -> str:
    token = create_token(tmp_path, "planted", PIN, SO_PIN)
    _, opened = _plant(token, case)
    assert opened["ok"] is False, f"the vault started with {case} planted"
    assert opened["type"] == "HsmConfigurationError"
    return str(opened["message"])


def test_a_token_with_only_the_nodes_own_keys_starts(tmp_path: Path) -> None:
    token = create_token(tmp_path, "planted", PIN, SO_PIN)
    assert _plant(token, "nothing")[1] == {"ok": True}


@pytest.mark.parametrize(
    ("case", "said"),
    [
        (
            "extractable",
            (
                "key ticket-protection/v2 may be wrapped by an untrusted key"
                " (CKA_WRAP_WITH_TRUSTED false)"
            ),
        ),
        ("not-sensitive", "key ticket-protection/v2 is not sensitive (CKA_SENSITIVE false)"),
        ("decrypt-on-tpk", "key ticket-protection/v2 may DECRYPT (CKA_DECRYPT true)"),
        ("encrypt-on-kek", "key key-encryption/v2 may ENCRYPT (CKA_ENCRYPT true)"),
        ("derive-added-to-own-key", "key audit/v1 may DERIVE (CKA_DERIVE true)"),
        ("public", "key ticket-protection/v2 is not private (CKA_PRIVATE false)"),
        (
            "id-of-another-version",
            "key ticket-protection/v2 has a CKA_ID that does not match its label",
        ),
        (
            "aes-as-tpk",
            "key ticket-protection/v2 has key type AES, not GENERIC_SECRET (CKA_KEY_TYPE)",
        ),
        ("short-kek", "key key-encryption/v2 is 16 bytes long, not 32 (CKA_VALUE_LEN)"),
        (
            "extractable-then-locked",
            "key key-encryption/v2 was extractable once (CKA_NEVER_EXTRACTABLE false)",
        ),
        ("sensitive-later", "key audit/v2 was not always sensitive (CKA_ALWAYS_SENSITIVE false)"),
    ],
)
def test_start_is_refused_naming_the_planted_key_and_its_attribute(
    tmp_path: Path, case: str, said: str
) -> None:
    assert said in _refusal(tmp_path, case)


def test_a_key_imported_from_known_bytes_is_refused_although_sensitive_and_unextractable(
    tmp_path: Path,
) -> None:
    # Whoever imported it knows the TPK and could forge tickets: only the token-set attributes
    # tell it from a generated key.
    # It reads exactly like a key unwrapped from a transport file; no vouch of the token's
    # security officer names it (the user cannot make one: CKA_TRUSTED is the SO's).
    message = _refusal(tmp_path, "known-bytes")
    assert message.startswith(
        "key ticket-protection/v2 was not generated in this token and its security officer"
        " did not vouch for it"
    )


def test_a_second_object_with_the_label_of_a_key_in_use_is_refused(tmp_path: Path) -> None:
    message = _refusal(tmp_path, "duplicate-label")
    assert "two objects in the token are labelled ticket-protection/v1" in message


def test_the_node_refuses_to_start_and_says_why_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}

    def kmsnode(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "firmware.cli", *args],
            cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    init = kmsnode("dev-init", str(tmp_path), "--ue-port", "0", "--li-port", "0")
    assert init.wait(timeout=120) == 0
    softhsm = tmp_path / "softhsm"
    token = SoftHsmToken(
        directory=softhsm,
        conf=softhsm / "softhsm2.conf",
        tokendir=softhsm / "tokens",
        label="kmsnode",
        pin_file=softhsm / "user.pin",
        module_path=module_path(),
        pin="",
    )
    _plant(token, "extractable", then_open=False)
    node = kmsnode("serve", "--config", str(tmp_path / "kmsnode.toml"))
    try:
        assert node.stdout is not None
        # A node that starts prints its listeners; one that refuses exits with nothing on stdout.
        assert node.stdout.readline() == ""
        _, err = node.communicate(timeout=120)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert node.returncode == 1
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("kmsnode: ")]
    said = (
        "key ticket-protection/v2 may be wrapped by an untrusted key (CKA_WRAP_WITH_TRUSTED false)"
    )
    assert line.startswith(f"kmsnode: {said}")
    assert (softhsm / "user.pin").read_text().strip() not in err


def test_a_key_planted_while_the_vault_is_open_is_refused_when_first_asked_for(
    tmp_path: Path,
) -> None:
    """A version that appears in the token at run time (the way key transport imports one) is
    checked like one found at start: a TPK planted from known bytes is never used."""
    token = create_token(tmp_path, "planted", PIN, SO_PIN)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "tests.hsm.later_version", "await", token.uri, token.module_path],
        cwd=REPO, env=token.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert waiting.stdout is not None and waiting.stdin is not None
        assert json.loads(waiting.stdout.readline()) == {"ready": True}
        assert _plant(token, "known-bytes", then_open=False) == [
            {"planted": "ticket-protection/v2"}
        ]
        waiting.stdin.write("2\n")
        waiting.stdin.flush()
        answer = json.loads(waiting.stdout.readline())
    finally:
        waiting.kill()
        waiting.wait(timeout=60)
    assert answer == {"error": "HsmConfigurationError"}
