"""A throw-away PostgreSQL server for development, demos and tests (never for production).

Rules (shared/spec/postgresql.md):
- The Debian package's binaries (`/usr/lib/postgresql/<major>/bin`); DevPgError when they are
  missing (`make deps` installs the apt package `postgresql`).
- initdb and postgres refuse to run as root: as root they run as the `postgres` system user, in a
  fresh folder under /tmp of mode 0755 (a 0700 folder above the data folder makes initdb fail).
- Loopback only, on a free port, with its own socket folder (never the system instance's).
- Trust authentication on loopback, except for the roles named in `password_roles`, which log in
  only with a password (scram-sha-256; the caller creates them), to exercise a store's password
  path.
- `options` default to fsync off (tests check visibility and atomicity, not power loss); pass
  `()` for the server's defaults (benchmarks).
- `database()` makes a new empty database; `close()` stops the server and removes its folder.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg


class DevPgError(RuntimeError):
    """The throw-away server cannot be made on this machine."""


def bindir() -> Path:
    """The newest installed PostgreSQL server's bin folder; DevPgError when there is none."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    if not found:
        raise DevPgError(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): install the apt "
            "package postgresql (make deps does)"
        )
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One postgres process in its own folder; `stop()`/`start()` for outage tests."""

    def __init__(
        self,
        options: tuple[str, ...] = ("-c", "fsync=off"),
        password_roles: tuple[str, ...] = (),
    ) -> None:
        self.password_roles = password_roles
        self.bin = bindir()
        self.options = options
        self.root = Path(tempfile.mkdtemp(prefix="kmsnode-pg-", dir="/tmp"))
        self.root.chmod(0o755)
        self.data, self.sock, self.log = self.root / "data", self.root / "sock", self.root / "log"
        self.data.mkdir(mode=0o700)
        self.sock.mkdir()
        self.log.touch()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise DevPgError(
                    "the postgres system user is missing (apt package postgresql)"
                ) from None
            for path in (self.data, self.sock, self.log):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.port = 0
        self._names = itertools.count(1)
        try:
            self._initdb()
        except BaseException:
            self.close()
            raise

    def _initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        with open(self.data / "pg_hba.conf", "w") as hba:
            hba.write(
                "local all postgres trust\n"
                + "".join(
                    f"host all {role} 127.0.0.1/32 scram-sha-256\n" for role in self.password_roles
                )
                + "host all all 127.0.0.1/32 trust\n"
            )
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed: {done.stderr.strip()}\n{log}")

    def start(self) -> None:
        """Start (again) and wait until it accepts connections; a new port on the first start,
        the same port after a stop, so clients reconnect to it."""
        for attempt in range(3):
            port = self.port or free_port()
            opts = ["-h", "127.0.0.1", "-p", str(port), "-k", str(self.sock), *self.options]
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                    "-o", " ".join(opts), "start",
                )  # fmt: skip
            except RuntimeError:
                if self.port or attempt == 2:
                    raise
                continue  # the free port was taken meanwhile: try another
            self.port = port
            return

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(), autocommit=True)

    def database(self) -> str:
        """A new empty database; returns its name."""
        name = f"kms_{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
