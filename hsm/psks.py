"""User PSKs held in the token: a bounded LRU of session objects, one per wrapped PSK.

Why: a ticket exchange derives four keys from the user's PSK (K1's auth_key to verify V, K2's
encr/salt/auth keys for the answer). The PSK is unwrapped once into a session object that is
SENSITIVE, not EXTRACTABLE and may only SIGN (HMAC), and every later PRF runs in the token on it,
as the TPK's does: no PSK value enters the process between requests, and no request after the
first pays for C_UnwrapKey (measured here: the per-request unwrap, read and destroy took ~95 us
of SoftHSM's time, one HMAC on a private session object ~15 us, eight of them per exchange).

Rules and invariants:
- Entries are keyed by the WrappedKey itself (KEK version and blob): a user whose PSK changes
  has a new blob, so a stale entry is never found for it; `forget_psk` destroys it at once.
- At most `limit` objects live in the token; the least recently used is destroyed first.
- An entry belongs to the session that made it: when the session is dropped (loss, close,
  re-initialisation) the objects are gone with it and `clear` forgets them without a call.
- Destroying a KEK version evicts every entry it wrapped (hsm/connection.py), and an entry whose
  KEK version is no longer loaded is refused and evicted when it is found (hsm/vault.py): a
  destroyed KEK version takes its PSKs with it.
- Timing: the entry is kept whether or not the request then authenticates, and the unknown
  caller's decoy PSK (core/tickets.py) is an entry like any other, so after its first use an
  unknown identity costs what a recently active one does; a provisioned user not seen recently
  costs one unwrap once, which then makes it recent.
- Not thread-safe by itself: every method runs under hsm.lock.PKCS11_LOCK, as all PKCS#11 work.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from firmware.core.ports import WrappedKey

DEFAULT_LIMIT = 1024


class PskObjects:
    """WrappedKey -> the token's session object holding that PSK (python-pkcs11 SecretKey)."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("the PSK object limit must be at least 1")
        self.limit = limit
        self._objects: OrderedDict[WrappedKey, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._objects)

    def get(self, wrapped: WrappedKey) -> Any | None:
        """The object of `wrapped`, now the most recently used; None when not held."""
        obj = self._objects.get(wrapped)
        if obj is not None:
            self._objects.move_to_end(wrapped)
        return obj

    def put(self, wrapped: WrappedKey, obj: Any) -> list[Any]:
        """Hold `obj` for `wrapped`; returns the objects the caller must destroy (the one it
        replaces, and the least recently used beyond the limit)."""
        evicted = []
        old = self._objects.pop(wrapped, None)
        if old is not None:
            evicted.append(old)
        self._objects[wrapped] = obj
        while len(self._objects) > self.limit:
            evicted.append(self._objects.popitem(last=False)[1])
        return evicted

    def pop(self, wrapped: WrappedKey) -> Any | None:
        """Stop holding `wrapped`; returns its object for the caller to destroy."""
        return self._objects.pop(wrapped, None)

    def pop_version(self, kek_version: int) -> list[Any]:
        """Stop holding every PSK wrapped under `kek_version`; returns their objects."""
        gone = [w for w in self._objects if w.kek_version == kek_version]
        return [self._objects.pop(w) for w in gone]

    def clear(self) -> None:
        """Forget every entry without a call (their session is gone)."""
        self._objects.clear()
