"""The suite's PostgreSQL: firmware/devpg.py's throw-away server as a session fixture.

Rules: when the server cannot be made (binaries missing), the fixture FAILS, never skips: CI must
not pass without running the PostgreSQL tests. The server stops at the session's end, also when
tests failed, and its folder is removed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from firmware import devpg
from firmware.devpg import DevPgError, free_port

PASSWORD_ROLE = "kms_pw"
PASSWORD = "pw-for-the-store-tests-7351"
_free_port = free_port

__all__ = ["PASSWORD", "PASSWORD_ROLE", "PgServer", "_free_port", "pg_server"]


class PgServer(devpg.PgServer):
    """The throw-away server, plus the role `kms_pw` that logs in only with its password."""

    def __init__(self, options: tuple[str, ...] = ("-c", "fsync=off")) -> None:
        super().__init__(options, password_roles=(PASSWORD_ROLE,))
        with self.admin() as conn:
            conn.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (stopped and removed at the end, also on failure)."""
    try:
        server = PgServer()
    except DevPgError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.close()
