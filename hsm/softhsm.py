"""Throw-away SoftHSM2 tokens for tests, dev and demo (never for production keys).

Rules:
- One token per directory: `<directory>/softhsm2.conf` (rendered from
  softhsm-config/softhsm2.conf.in) and `<directory>/tokens/`. Point SOFTHSM2_CONF at the conf
  before the library is loaded.
- Tokens are selected by label, never by slot number (slot ids change when a token is initialised).
- The user PIN is written to `<directory>/user.pin` (mode 0600) so the vault reads it like any PIN
  source; the SO PIN is used once and not stored.
- softhsm2-util takes the PINs on its argv, visible in the process table while it runs (well under
  a second). That is acceptable only for these throw-away tokens; a production token is initialised
  by its owner's tooling, not by this module.
"""

from __future__ import annotations

import os
import select
import shutil
import string
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
# The template ships inside the package (softhsm-config/softhsm2.conf.in links to it), so an
# installed node (the appliance image) renders the same conf as a checkout.
TEMPLATE = Path(__file__).resolve().parent / "data" / "softhsm2.conf.in"


class SoftHsmError(RuntimeError):
    """softhsm2-util failed; the message has its exit status and stderr, never a PIN."""


@dataclass(frozen=True)
class SoftHsmToken:
    """Paths and names of a throw-away token."""

    directory: Path
    conf: Path
    tokendir: Path
    label: str
    pin_file: Path
    module_path: str
    pin: str = field(repr=False)

    @property
    def uri(self) -> str:
        """RFC 7512 URI of the token, with the PIN file as pin-source."""
        label = quote(self.label, safe="")
        return f"pkcs11:token={label}?pin-source={quote(str(self.pin_file), safe='/')}"

    def env(self) -> dict[str, str]:
        """Environment for a child process that should use this token."""
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}


def module_path() -> str:
    """The SoftHSM2 module: $SOFTHSM2_LIB, else the Debian location."""
    return os.environ.get("SOFTHSM2_LIB", DEFAULT_MODULE)


def render_conf(tokendir: Path, *, mechanisms: str = "ALL", log_level: str = "ERROR") -> str:
    text = TEMPLATE.read_text(encoding="utf-8")
    return string.Template(text).substitute(
        tokendir=str(tokendir), mechanisms=mechanisms, log_level=log_level
    )


def write_secret(path: Path, value: str) -> None:
    """Write `value` to a new file readable only by its owner."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")


def create_token(
    directory: str | os.PathLike[str],
    label: str,
    pin: str,
    so_pin: str,
    *,
    mechanisms: str = "ALL",
) -> SoftHsmToken:
    """Create `directory` with a conf, a token directory and one initialised token `label`.

    `mechanisms` is the conf's slots.mechanisms (ALL by default; tests turn one off with
    "-,CKM_AES_KEY_WRAP"). The PINs never reach argv: softhsm2-util reads them from a
    pseudo-terminal (it reads only a terminal, not a pipe). Raises SoftHsmError when
    softhsm2-util fails or does not finish within INIT_DEADLINE.
    """
    if shutil.which("softhsm2-util") is None:
        raise SoftHsmError("softhsm2-util not found (Debian package softhsm2)")
    base = Path(directory).resolve()
    tokendir = base / "tokens"
    tokendir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = base / "softhsm2.conf"
    conf.write_text(render_conf(tokendir, mechanisms=mechanisms), encoding="utf-8")
    _init_token(conf, label, pin, so_pin)
    pin_file = base / "user.pin"
    write_secret(pin_file, pin)
    return SoftHsmToken(
        directory=base,
        conf=conf,
        tokendir=tokendir,
        label=label,
        pin_file=pin_file,
        module_path=module_path(),
        pin=pin,
    )


INIT_DEADLINE = 30.0  # seconds softhsm2-util --init-token may take


def _init_token(conf: Path, label: str, pin: str, so_pin: str) -> None:
    """softhsm2-util --init-token with the SO PIN and user PIN typed into a pseudo-terminal."""
    primary, terminal = os.openpty()
    try:
        os.write(primary, f"{so_pin}\n{so_pin}\n{pin}\n{pin}\n".encode())
        proc = subprocess.Popen(
            ["softhsm2-util", "--init-token", "--free", "--label", label],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        )
        os.close(terminal)
        terminal = -1
        output = _drain(primary, proc)
    finally:
        os.close(primary)
        if terminal >= 0:
            os.close(terminal)
    if proc.returncode != 0:
        # Only softhsm2-util's own ERROR lines: the terminal echoed the PINs typed into it.
        text = output.decode(errors="replace")
        errors = "; ".join(ln.strip() for ln in text.splitlines() if "ERROR" in ln)
        raise SoftHsmError(f"softhsm2-util --init-token failed ({proc.returncode}): {errors}")


def _drain(primary: int, proc: subprocess.Popen[bytes]) -> bytes:
    """Read the terminal until softhsm2-util exits (bounded by INIT_DEADLINE; killed after)."""
    end = time.monotonic() + INIT_DEADLINE
    output = b""
    while True:
        ready, _, _ = select.select([primary], [], [], max(end - time.monotonic(), 0.0))
        if not ready:
            proc.kill()
            proc.wait()
            raise SoftHsmError(f"softhsm2-util did not finish within {INIT_DEADLINE:.0f} s")
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: softhsm2-util has exited (our copy of its side is closed)
            break
        if not chunk:
            break
        output += chunk
    proc.wait(timeout=INIT_DEADLINE)
    return output
