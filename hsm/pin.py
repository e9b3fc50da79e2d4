"""Where the token's user PIN comes from: a file, or a systemd credential.

Rules:
- A PIN is never taken from configuration text or argv; only from a file (mode 0600 by
  convention) or a systemd credential (`$CREDENTIALS_DIRECTORY/<name>`, LoadCredential=).
- One trailing newline (LF or CRLF) is stripped; nothing else is changed.
- The PIN is read when it is needed (start, re-login after HSM loss) and not kept by this module.
- Errors name the source (path or credential name), never the content; PinSource's repr has no PIN.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from firmware.core.errors import HsmConfigurationError


class PinKind(enum.Enum):
    FILE = "file"
    CREDENTIAL = "credential"


@dataclass(frozen=True)
class PinSource:
    """A file path or a systemd credential name holding the user PIN."""

    kind: PinKind
    where: str

    @classmethod
    def file(cls, path: str | os.PathLike[str]) -> PinSource:
        return cls(PinKind.FILE, os.fspath(path))

    @classmethod
    def credential(cls, name: str) -> PinSource:
        if not name or "/" in name or name in (".", ".."):
            raise HsmConfigurationError("systemd credential name for the PIN is invalid")
        return cls(PinKind.CREDENTIAL, name)

    @classmethod
    def parse(cls, text: str) -> PinSource:
        """`file:/path`, `file:///path`, `/path` or `credential:<name>` (the URI pin-source)."""
        if text.startswith("credential:"):
            return cls.credential(text.removeprefix("credential:"))
        if text.startswith("file:"):
            parts = urlsplit(text)
            path = unquote(parts.path)
            if parts.netloc not in ("", "localhost") or not path.startswith("/"):
                raise HsmConfigurationError("PIN source file: URI must name a local absolute path")
            return cls.file(path)
        if text.startswith("/"):
            return cls.file(text)
        raise HsmConfigurationError(
            "PIN source must be an absolute file path, a file: URI or credential:<name>"
        )

    def describe(self) -> str:
        return f"{self.kind.value} {self.where!r}"

    def path(self) -> Path:
        if self.kind is PinKind.FILE:
            return Path(self.where)
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise HsmConfigurationError(
                f"PIN source {self.describe()}: $CREDENTIALS_DIRECTORY is not set "
                "(the service needs LoadCredential= for it)"
            )
        return Path(directory) / self.where

    def read(self) -> str:
        """The PIN; raises HsmConfigurationError naming the source (never the PIN)."""
        path = self.path()
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise HsmConfigurationError(
                f"cannot read the PIN from {self.describe()}: {exc.strerror}"
            ) from None
        if raw.endswith(b"\r\n"):
            raw = raw[:-2]
        elif raw.endswith(b"\n"):
            raw = raw[:-1]
        try:
            pin = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HsmConfigurationError(f"the PIN in {self.describe()} is not UTF-8") from None
        if not pin:
            raise HsmConfigurationError(f"the PIN in {self.describe()} is empty")
        return pin
