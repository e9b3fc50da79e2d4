"""FakeVault: an in-memory KeyVault for unit tests of the core (no PKCS#11, no SoftHSM).

Rules:
- Same version semantics as Pkcs11Vault: highest version ACTIVE, lower DECRYPT_ONLY, destroy of
  the active version refused, unknown versions raise KeyVersionNotFound.
- Same algorithms: HMAC-SHA-1/-256 and the MIKEY PRF over the TPK, AES key wrap (RFC 3394) under
  the KEK, HMAC-SHA-256 with the audit key, so results are comparable with the real vault on the
  same key bytes.
- `fail_next(exc)` makes the next port call raise `exc` (once); `set_available(False)` makes every
  call raise HsmUnavailable until `set_available(True)`. Listeners hear availability changes.
- Key bytes live in memory and never appear in a repr.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Callable, Sequence

from firmware.core.errors import HsmUnavailable, KeyVersionNotFound
from firmware.core.ports import KeyName, KeyState, KeyVersionInfo, WrappedKey
from firmware.mikey.crypto import fast_prf
from firmware.mikey.prf import PrfFunc, prf_with_hmac
from hsm.errors import ActiveVersionRefused, PskLengthError, WrappedKeyRejected

Listener = Callable[[bool, str], None]

_SIZES = {KeyName.TICKET_PROTECTION: 32, KeyName.KEY_ENCRYPTION: 32, KeyName.AUDIT: 32}


class FakeVault:
    """In-memory KeyVault; see the module docstring."""

    def __init__(
        self, *, ensure_keys: bool = True, rng: Callable[[int], bytes] = secrets.token_bytes
    ) -> None:
        self._rng = rng
        self._lock = threading.Lock()
        self._keys: dict[KeyName, dict[int, bytes]] = {name: {} for name in KeyName}
        self._fail: BaseException | None = None
        self._available = True
        self._reason = "available"
        self._listeners: list[Listener] = []
        self.calls: list[str] = []
        self.forgotten: list[WrappedKey] = []  # forget_psk's arguments, in order
        if ensure_keys:
            self.ensure_keys()

    def __repr__(self) -> str:
        counts = {n.value: sorted(v) for n, v in self._keys.items()}
        return f"FakeVault(available={self._available}, versions={counts})"

    # --- test controls ------------------------------------------------------------------------

    def fail_next(self, exc: BaseException) -> None:
        """Make the next port call raise `exc`."""
        with self._lock:
            self._fail = exc

    def set_available(self, available: bool, reason: str = "HSM device removed") -> None:
        with self._lock:
            changed = available != self._available
            self._available = available
            self._reason = "available" if available else reason
        if changed:
            for listener in list(self._listeners):
                listener(available, self._reason)

    def device_removed(self, reason: str = "HSM device removed") -> None:
        self.set_available(False, reason)

    def device_added(self) -> None:
        self.set_available(True)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def import_key(self, name: KeyName, value: bytes) -> KeyVersionInfo:
        """Store known bytes as the next version of `name` (tests)."""
        with self._lock:
            version = max(self._keys[name], default=0) + 1
            self._keys[name][version] = bytes(value)
        return KeyVersionInfo(name, version, KeyState.ACTIVE)

    def ensure_keys(self) -> list[KeyVersionInfo]:
        """Create v1 of every name without versions (not recorded in `calls`)."""
        return [self._create(n) for n in KeyName if not self._keys[n]]

    def _create(self, name: KeyName) -> KeyVersionInfo:
        with self._lock:
            version = max(self._keys[name], default=0) + 1
            self._keys[name][version] = secrets.token_bytes(_SIZES[name])
        return KeyVersionInfo(name, version, KeyState.ACTIVE)

    # --- KeyVault -------------------------------------------------------------------------------

    def _enter(self, what: str) -> None:
        with self._lock:
            self.calls.append(what)
            exc, self._fail = self._fail, None
            if exc is not None:
                raise exc
            if not self._available:
                raise HsmUnavailable(f"HSM unavailable: {self._reason}")

    def _key(self, name: KeyName, version: int) -> bytes:
        key = self._keys[name].get(version)
        if key is None:
            raise KeyVersionNotFound(f"{name.value} version {version} is not in the token")
        return key

    def _active(self, name: KeyName) -> int:
        if not self._keys[name]:
            raise KeyVersionNotFound(f"the token has no version of {name.value}")
        return max(self._keys[name])

    def ticket_prf(
        self, version: int, prf: PrfFunc, wants: Sequence[tuple[bytes, int]]
    ) -> list[bytes]:
        self._enter("ticket_prf")
        key = self._key(KeyName.TICKET_PROTECTION, version)

        def mac(data: bytes) -> bytes:
            return hmac.digest(key, data, prf.hash_name)

        return [prf_with_hmac(prf, mac, label, n) for label, n in wants]

    def wrap_psk(self, psk: bytes) -> WrappedKey:
        from cryptography.hazmat.primitives.keywrap import aes_key_wrap

        if len(psk) not in (16, 24, 32):
            raise PskLengthError(f"a PSK to wrap must be 16, 24 or 32 bytes (got {len(psk)})")
        self._enter("wrap_psk")
        version = self._active(KeyName.KEY_ENCRYPTION)
        blob = aes_key_wrap(self._key(KeyName.KEY_ENCRYPTION, version), psk)
        return WrappedKey(kek_version=version, blob=blob)

    def psk_prf(
        self, wrapped: WrappedKey, prf: PrfFunc, wants: Sequence[tuple[bytes, int]]
    ) -> list[bytes]:
        from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

        self._enter("psk_prf")
        kek = self._key(KeyName.KEY_ENCRYPTION, wrapped.kek_version)
        try:
            psk = aes_key_unwrap(kek, wrapped.blob)
        except (InvalidUnwrap, ValueError):
            raise WrappedKeyRejected("PSK unwrap failed: the wrapped key was rejected") from None
        return [fast_prf(prf, psk, label, n) for label, n in wants]

    def forget_psk(self, wrapped: WrappedKey) -> None:
        with self._lock:
            self.forgotten.append(wrapped)

    def random_bytes(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("random_bytes needs n >= 0")
        self._enter("random_bytes")
        return self._rng(n)

    def audit_hmac(self, data: bytes) -> bytes:
        self._enter("audit_hmac")
        return hmac.digest(self._key(KeyName.AUDIT, self._active(KeyName.AUDIT)), data, "sha256")

    def versions(self, name: KeyName) -> list[KeyVersionInfo]:
        self._enter("versions")
        found = sorted(self._keys[name])
        active = max(found, default=0)
        return [
            KeyVersionInfo(name, v, KeyState.ACTIVE if v == active else KeyState.DECRYPT_ONLY)
            for v in found
        ]

    def active_version(self, name: KeyName) -> int:
        self._enter("active_version")
        return self._active(name)

    def create_version(self, name: KeyName) -> KeyVersionInfo:
        self._enter("create_version")
        return self._create(name)

    def destroy_version(self, name: KeyName, version: int) -> None:
        self._enter("destroy_version")
        with self._lock:
            if version not in self._keys[name]:
                raise KeyVersionNotFound(f"{name.value}/v{version} is not in the token")
            if version == max(self._keys[name]):
                raise ActiveVersionRefused(
                    f"{name.value}/v{version} is the active version; create a newer one first"
                )
            del self._keys[name][version]

    def available(self) -> bool:
        return self._available
