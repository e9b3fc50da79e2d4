"""Where a store's database password comes from: a file, or a systemd credential.

Rules:
- A password is never taken from configuration text, a URL or argv; only from a file (mode
  0600 by convention) or a systemd credential (`$CREDENTIALS_DIRECTORY/<name>`, LoadCredential=).
- One trailing newline (LF or CRLF) is stripped; nothing else is changed.
- Errors name the source (path or credential name), never the content.
"""

from __future__ import annotations

import os
from pathlib import Path

from firmware.core.errors import ConfigError


def read_password(file: str | os.PathLike[str] | None = None, credential: str | None = None) -> str:
    """The password in `file` or in the systemd credential `credential` (exactly one)."""
    if (file is None) == (credential is None):
        raise ConfigError("the store password needs exactly one of a file or a credential")
    if credential is not None:
        if not credential or "/" in credential or credential in (".", ".."):
            raise ConfigError("the store password's systemd credential name is invalid")
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                f"store password credential {credential!r}: $CREDENTIALS_DIRECTORY is not set "
                "(the service needs LoadCredential= for it)"
            )
        path, source = Path(directory) / credential, f"credential {credential!r}"
    else:
        assert file is not None
        path, source = Path(file), f"file {os.fspath(file)!r}"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the store password from {source}: {exc.strerror}") from None
    raw = raw.removesuffix(b"\n").removesuffix(b"\r") if raw.endswith(b"\n") else raw
    try:
        password = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"the store password in {source} is not UTF-8") from None
    if not password:
        raise ConfigError(f"the store password in {source} is empty")
    return password
