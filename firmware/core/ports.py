"""Ports of the core: what the use cases need from the outside, as typing.Protocol.

Rules:
- The core depends only on these protocols; adapters (hsm/, firmware/store/) implement them.
- Key material that lives in the HSM never crosses a port: the vault computes with it and returns
  results (HMACs, wrapped blobs). The only plaintext secret a port returns is a user PSK from
  `unwrap_psk`, which the caller keeps only for the request that needed it.
- Key names are fixed (KeyName); labels in the token are `<name>/v<version>`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from firmware.mikey.prf import PrfFunc


class KeyName(enum.StrEnum):
    """The node's long-term keys; each has one purpose (DESIGN.md, Keys)."""

    TICKET_PROTECTION = "ticket-protection"  # TPK: generic secret, HMAC (SIGN/VERIFY) only
    KEY_ENCRYPTION = "key-encryption"  # KEK: AES-256, WRAP/UNWRAP only
    AUDIT = "audit"  # audit key: generic secret, HMAC (SIGN/VERIFY) only


class KeyState(enum.Enum):
    """State of a key version, as the contract's KeyVersion.State."""

    ACTIVE = 1  # protects new data
    DECRYPT_ONLY = 2  # verifies/opens what it protected; protects nothing new
    DESTROYED = 3


@dataclass(frozen=True)
class KeyVersionInfo:
    """One version of a named key as the token holds it."""

    name: KeyName
    version: int
    state: KeyState


@dataclass(frozen=True)
class WrappedKey:
    """A user PSK wrapped under a KEK version (CKM_AES_KEY_WRAP, RFC 3394)."""

    kek_version: int
    blob: bytes = field(repr=False)


class KeyVault(Protocol):
    """The node's HSM. Every method may raise HsmUnavailable; none ever reveals a long-term key.

    Version state is derived from the token: the highest existing version of a name is ACTIVE,
    lower existing versions are DECRYPT_ONLY; destroyed versions are gone from the token.
    """

    def ticket_hmac(self, version: int, prf: PrfFunc, data: bytes) -> bytes:
        """HMAC of `data` under TPK `version`, computed in the token (C_Sign)."""
        ...

    def ticket_prf(self, version: int, prf: PrfFunc, label: bytes, out_len: int) -> bytes:
        """The MIKEY PRF (RFC 3830 4.1.2) with TPK `version` as inkey, every HMAC in the token."""
        ...

    def wrap_psk(self, psk: bytes) -> WrappedKey:
        """Wrap a user PSK under the active KEK."""
        ...

    def unwrap_psk(self, wrapped: WrappedKey) -> bytes:
        """Unwrap a user PSK; raises KeyVersionNotFound when its KEK version is gone."""
        ...

    def random_bytes(self, n: int) -> bytes:
        """`n` bytes from the token's RNG (C_GenerateRandom)."""
        ...

    def audit_hmac(self, data: bytes) -> bytes:
        """HMAC-SHA-256 of `data` under the active audit key, computed in the token."""
        ...

    def versions(self, name: KeyName) -> list[KeyVersionInfo]:
        """Versions of `name` in the token, lowest first."""
        ...

    def active_version(self, name: KeyName) -> int:
        """The highest version of `name` in the token; raises KeyVersionNotFound when none."""
        ...

    def create_version(self, name: KeyName) -> KeyVersionInfo:
        """Generate the next version of `name` in the token (it becomes ACTIVE)."""
        ...

    def destroy_version(self, name: KeyName, version: int) -> None:
        """Destroy one version in the token (C_DestroyObject); refuses the active version."""
        ...

    def available(self) -> bool:
        """True when the last call or probe reached the token."""
        ...
