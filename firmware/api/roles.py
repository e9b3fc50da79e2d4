"""Caller identity and role from the TLS client certificate (never from metadata).

Rules:
- The caller's identities are the SAN URIs and DNS names of its verified client certificate, as
  gRPC's auth context reports them; without a verified certificate there are none.
- A role is held when one of those identities is listed for it in the config's [roles].
- The LI listener serves only TLS 1.3 connections; gRPC Python cannot set a minimum TLS version on
  the server, so every RPC on an older protocol is refused here (`require_tls13`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class Role(enum.StrEnum):
    DF2 = "df2"
    ADMIN = "admin"
    UE = "ue"


@dataclass(frozen=True)
class Caller:
    """Who is calling, as proven by TLS."""

    identities: tuple[str, ...]
    roles: frozenset[Role]
    tls_version: str

    @property
    def name(self) -> str:
        """The identity to show in audit records and alarms."""
        return self.identities[0] if self.identities else "anonymous"


def _values(auth: Mapping[str, Sequence[bytes]], key: str) -> list[str]:
    return [v.decode("utf-8", "replace") for v in auth.get(key, ())]


def caller_from_auth_context(
    auth: Mapping[str, Sequence[bytes]], role_map: Mapping[str, Sequence[str]]
) -> Caller:
    identities = tuple(dict.fromkeys(_values(auth, "peer_uri") + _values(auth, "peer_dns")))
    roles = frozenset(
        Role(role) for role, members in role_map.items() if set(members) & set(identities)
    )
    versions = _values(auth, "ssl_tls_version")
    return Caller(identities, roles, versions[0] if versions else "")


def caller_of(context: Any, role_map: Mapping[str, Sequence[str]]) -> Caller:
    """The Caller of a gRPC servicer context."""
    return caller_from_auth_context(context.auth_context(), role_map)
