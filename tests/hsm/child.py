"""Run a tests.hsm child module on a throw-away token (its own SOFTHSM2_CONF) and read its JSON.

A child is a fresh process, as a starting node is: a token with another conf, or one a test spoils
on purpose (a planted key), never reaches the test session's process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from hsm.softhsm import SoftHsmToken

REPO = Path(__file__).resolve().parents[2]


def run_child(token: SoftHsmToken, module: str, *args: str) -> tuple[list[Any], str]:
    """(one JSON value per stdout line, everything it wrote) of `python -m tests.hsm.<module>`."""
    proc = subprocess.run(
        [sys.executable, "-m", f"tests.hsm.{module}", *args],
        cwd=REPO,
        env=token.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stdout + proc.stderr
