"""hsm.softhsm.create_token (dev-init, dev-node and the test tokens): the PINs never reach any
process's argv, and a failed init names softhsm2-util's error without echoing a PIN."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hsm import softhsm

pytestmark = pytest.mark.softhsm

PIN, SO_PIN = "user-pin-3141-5926", "so-pin-2718-2818"


def _recording(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    seen: list[list[str]] = []
    real = subprocess.Popen

    def recording(args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        seen.append(list(args))
        return real(args, **kw)

    monkeypatch.setattr(softhsm.subprocess, "Popen", recording)
    return seen


def test_create_token_types_the_pins_and_never_puts_them_on_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _recording(monkeypatch)
    token = softhsm.create_token(tmp_path, "argv-test", PIN, SO_PIN)
    assert seen and seen[0][0] == "softhsm2-util"
    assert not [a for args in seen for a in args if PIN in a or SO_PIN in a]
    assert token.pin_file.read_text().strip() == PIN
    assert token.pin_file.stat().st_mode & 0o077 == 0
    assert token.tokendir.stat().st_mode & 0o077 == 0
    # the token really has those PINs: the user PIN logs in (in a child: this process's
    # PKCS#11 library was initialised with another SOFTHSM2_CONF)
    login = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pkcs11, sys; t = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2]);"
            " t.open(user_pin=sys.stdin.read().strip()).close()",
            token.module_path,
            token.label,
        ],
        input=PIN,
        env=token.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert login.returncode == 0, login.stderr


def test_a_failed_init_says_why_without_echoing_a_pin(tmp_path: Path) -> None:
    """A conf softhsm2-util cannot read: its ERROR line, never the PINs the terminal echoed."""
    with pytest.raises(softhsm.SoftHsmError) as info:
        softhsm._init_token(tmp_path / "missing.conf", "no-conf", PIN, SO_PIN)
    message = str(info.value)
    assert "ERROR" in message and PIN not in message and SO_PIN not in message
