"""Pkcs11Vault: the node's KeyVault on a PKCS#11 token (python-pkcs11; SoftHSM2 in dev and CI).

The vault is three jobs, one module each:
- hsm/connection.py: the library, the one logged-in session, finding and checking the keys
  (hsm/keycheck.py: a key that breaks its template refuses the start);
- hsm/monitor.py: availability: loss detection, the probe, re-initialisation and recovery,
  listeners;
- here: the port's operations, each a plain function of the connection run by
  Pkcs11Vault._call, the one place that takes PKCS11_LOCK, maps PKCS#11 errors (hsm/errors.py),
  marks a loss and tells the listeners.

Rules and invariants:
- Every PKCS#11 call runs under hsm.lock.PKCS11_LOCK (re-exported here; see there why).
- One vault per process: recovery re-initialises the library, which closes every session of the
  process.
- An operation either returns its result or raises a KmsError: HsmUnavailable (no session, or the
  token was lost during the call: the vault is then marked unavailable and listeners hear it after
  the lock is released), HsmConfigurationError, KeyVersionNotFound, WrappedKeyRejected,
  PskLengthError, ActiveVersionRefused. No key is ever returned: long-term keys never leave the
  token, and a user PSK is unwrapped into a sensitive session object (hsm/psks.py) that its PRF
  runs on; a PSK shorter than PSK_HMAC_BYTES is read once, on that first unwrap, to be padded.
- Hot operations (HMAC, PRF, random bytes) take hsm/direct.py's path (GIL held, under the
  lock) and fall back to python-pkcs11 when it fails, which raises the mapped error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from firmware.core.errors import HsmConfigurationError, KeyVersionNotFound
from firmware.core.ports import KeyName, KeyState, KeyVersionInfo, WrappedKey
from firmware.mikey.prf import PrfFunc, prf_with_hmac
from hsm.connection import Connection, Disconnected, mechanism_name
from hsm.direct import DirectCallFailed
from hsm.errors import PskLengthError, WrappedKeyRejected
from hsm.lock import PKCS11_LOCK
from hsm.monitor import AvailabilityMonitor, Listener
from hsm.pin import PinSource
from hsm.psks import DEFAULT_LIMIT
from hsm.templates import (
    AUDIT_MECHANISM,
    HMAC_MECHANISM,
    PSK_HMAC_BYTES,
    PSK_IN_TOKEN,
    REQUIRED_MECHANISMS,
    TRANSIENT_PSK,
    WRAP_MECHANISM,
)
from hsm.uri import parse_uri

__all__ = ["PKCS11_LOCK", "Pkcs11Vault", "VaultSettings"]

A = TypeVar("A")
T = TypeVar("T")

TPK, KEK, AUDIT = KeyName.TICKET_PROTECTION, KeyName.KEY_ENCRYPTION, KeyName.AUDIT


@dataclass(frozen=True)
class VaultSettings:
    """How the vault reaches its token.

    token_uri: RFC 7512 URI (token=<label>; optional manufacturer/serial/model; query module-path,
    pin-source). module_path and pin_source here override the URI's.
    """

    token_uri: str
    module_path: str | None = None
    pin_source: PinSource | None = None
    probe_interval: float = 5.0
    session_copies: bool = True
    psk_objects: int = DEFAULT_LIMIT  # user PSKs held in the token at most (hsm/psks.py)
    required_mechanisms: frozenset[Mechanism] = REQUIRED_MECHANISMS
    health_check: bool = True
    direct_calls: bool = True  # hot calls through hsm/direct.py (GIL held; see there)


def _check_psk(psk: bytes) -> None:
    if len(psk) < 16 or len(psk) % 8 or len(psk) > PSK_HMAC_BYTES:
        raise PskLengthError(f"a PSK to wrap must be 16, 24 or 32 bytes (got {len(psk)})")


def _check_blob(wrapped: WrappedKey) -> None:
    blob = wrapped.blob
    if len(blob) < 24 or len(blob) % 8 or len(blob) > PSK_HMAC_BYTES + 8:
        raise WrappedKeyRejected(f"a wrapped PSK has a bad length ({len(blob)} bytes)")


class Pkcs11Vault:
    """KeyVault on a PKCS#11 token; see the module docstring for the rules."""

    def __init__(self, settings: VaultSettings) -> None:
        uri = parse_uri(settings.token_uri)
        module = settings.module_path or uri.module_path
        if not module:
            raise HsmConfigurationError(
                "no PKCS#11 module: set module_path or module-path in the token URI"
            )
        if settings.pin_source is not None:
            pin_source = settings.pin_source
        elif uri.pin_source:
            pin_source = PinSource.parse(uri.pin_source)
        else:
            raise HsmConfigurationError("no PIN source: set pin_source or pin-source in the URI")
        self._conn = Connection(
            uri,
            module,
            pin_source,
            required_mechanisms=settings.required_mechanisms,
            session_copies=settings.session_copies,
            direct_calls=settings.direct_calls,
            psk_objects=settings.psk_objects,
        )
        self._monitor = AvailabilityMonitor(
            self._conn, probe_interval=settings.probe_interval, health_check=settings.health_check
        )

    # --- life cycle ---------------------------------------------------------------------------

    @classmethod
    def open(cls, settings: VaultSettings, *, monitor: bool = True) -> Pkcs11Vault:
        """Create and start a vault; raises HsmConfigurationError when it cannot serve."""
        vault = cls(settings)
        vault.start(monitor=monitor)
        return vault

    def start(self, *, monitor: bool = True) -> None:
        """Load the module, find the token, check mechanisms, log in, load and check keys."""
        with PKCS11_LOCK:
            self._conn.load_library()
            self._conn.connect()
            self._monitor.connected()
        self._monitor.notify()
        if monitor:
            self.start_monitor()

    def start_monitor(self) -> None:
        """Run probe() every probe_interval in a daemon thread (idempotent)."""
        self._monitor.start()

    def close(self) -> None:
        """Stop the monitor, close the session (logging out), drop every handle."""
        self._monitor.stop()
        with PKCS11_LOCK:
            self._conn.close()
            self._monitor.closed()

    def __enter__(self) -> Pkcs11Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_listener(self, listener: Listener) -> None:
        """`listener(available, reason)` is called on every availability change."""
        self._monitor.add_listener(listener)

    # --- the one helper -----------------------------------------------------------------------

    def _call(self, doing: str, op: Callable[[Connection, A], T], arg: A) -> T:
        """`op(connection, arg)` under PKCS11_LOCK; a PKCS#11 error is mapped (a loss marks the
        vault unavailable) and raised after the listeners heard of it, outside the lock.

        Operations are plain functions of the connection and one argument (a tuple when they
        need several): on this interpreter forwarding *args cost ~1,250 instructions a call and
        a bound method ~400 (callgrind), against ~17,000 for all of random_bytes.
        """
        with PKCS11_LOCK:
            try:
                return op(self._conn, arg)
            except p11e.PKCS11Error as exc:
                error = self._monitor.failed(exc, doing)
            except Disconnected:
                raise self._monitor.unavailable() from None
        self._monitor.notify()
        raise error

    # --- KeyVault -----------------------------------------------------------------------------

    def ticket_hmac(self, version: int, prf: PrfFunc, data: bytes) -> bytes:
        """One HMAC under TPK `version` in the token: not part of the KeyVault port (the node
        reaches the TPK through ticket_prf); the tests and bench_vault probe keys with it."""
        return self._call("ticket HMAC", _ticket_hmac, (version, HMAC_MECHANISM[prf], data))

    def ticket_prf(
        self, version: int, prf: PrfFunc, wants: Sequence[tuple[bytes, int]]
    ) -> list[bytes]:
        return self._call("ticket PRF", _ticket_prf, (version, prf, wants))

    def wrap_psk(self, psk: bytes) -> WrappedKey:
        _check_psk(psk)
        return self._call("PSK wrap", _wrap, psk)

    def psk_prf(
        self, wrapped: WrappedKey, prf: PrfFunc, wants: Sequence[tuple[bytes, int]]
    ) -> list[bytes]:
        _check_blob(wrapped)
        return self._call("PSK PRF", _psk_prf, (wrapped, prf, wants))

    def forget_psk(self, wrapped: WrappedKey) -> None:
        self._call("forgetting a PSK", _forget_psk, wrapped)

    def random_bytes(self, n: int) -> bytes:
        if n <= 0:
            if n == 0:
                return b""
            raise ValueError("random_bytes needs n >= 0")
        return self._call("random generation", _random, n)

    def audit_hmac(self, data: bytes) -> bytes:
        return self._call("audit HMAC", _audit_hmac, data)

    def versions(self, name: KeyName) -> list[KeyVersionInfo]:
        return self._call("reading key versions", _versions, name)

    def active_version(self, name: KeyName) -> int:
        return self._call("reading key versions", Connection.active_of, name)

    def create_version(self, name: KeyName) -> KeyVersionInfo:
        version = self._call(f"creating a {name.value} version", Connection.create, name)
        return KeyVersionInfo(name, version, KeyState.ACTIVE)

    def destroy_version(self, name: KeyName, version: int) -> None:
        self._call(f"destroying {name.value}/v{version}", _destroy, (name, version))

    def available(self) -> bool:
        return self._monitor.available()

    # --- beyond the port ----------------------------------------------------------------------

    def ensure_keys(self) -> list[KeyVersionInfo]:
        """Create version 1 of every key name that has no version yet (first start, dev init)."""
        return [
            self.create_version(name)
            for name in KeyName
            if not self._call("reading key versions", Connection.versions_of, name)
        ]

    def refresh(self) -> None:
        """Re-read and re-check the key versions (after another process changed them)."""
        self._call("reading key versions", _reload, None)

    def probe(self, *, force: bool = False) -> bool:
        """Check the token when available; re-initialise and log in again when not.

        Returns availability afterwards. `force` retries even after a refused login.
        """
        return self._monitor.probe(force=force)

    def device_removed(self, reason: str = "HSM device removed") -> None:
        """The hot-plug watcher saw the device go: mark unavailable, drop handles (no PKCS#11)."""
        self._monitor.device_removed(reason)

    def device_added(self) -> None:
        """The hot-plug watcher saw the device (again): probe now."""
        self._monitor.device_added()

    @property
    def reason(self) -> str:
        """Why the vault is unavailable (or "available")."""
        return self._monitor.reason

    @property
    def mechanisms(self) -> list[str]:
        return sorted(mechanism_name(m) for m in self._conn.mechanisms)


# --- the operations: run by Pkcs11Vault._call under PKCS11_LOCK -----------------------------------


def _sign(conn: Connection, key: Any, mechanism: Any, data: bytes) -> bytes:
    """C_Sign: directly (GIL held) when possible, else through python-pkcs11. `key` came from
    Connection.use, so the session is live."""
    direct = conn.direct
    if direct is not None:
        with contextlib.suppress(DirectCallFailed):
            return direct.sign(conn.session.handle, key.handle, mechanism, data)
    return bytes(key.sign(data, mechanism=mechanism))


def _ticket_hmac(conn: Connection, args: tuple[int, Mechanism, bytes]) -> bytes:
    version, mechanism, data = args
    return _sign(conn, conn.use(TPK, version), mechanism, data)


Wants = Sequence[tuple[bytes, int]]


def _prfs(conn: Connection, key: Any, prf: PrfFunc, wants: Wants) -> list[bytes]:
    """PRF(key, label)[:out_len] for each of `wants`, every HMAC a C_Sign with `key`."""
    mechanism = HMAC_MECHANISM[prf]

    def mac(data: bytes) -> bytes:
        return _sign(conn, key, mechanism, data)

    return [prf_with_hmac(prf, mac, label, out_len) for label, out_len in wants]


def _ticket_prf(conn: Connection, args: tuple[int, PrfFunc, Wants]) -> list[bytes]:
    version, prf, wants = args
    return _prfs(conn, conn.use(TPK, version), prf, wants)


def _psk_prf(conn: Connection, args: tuple[WrappedKey, PrfFunc, Wants]) -> list[bytes]:
    wrapped, prf, wants = args
    return _prfs(conn, _psk_object(conn, wrapped), prf, wants)


def _psk_object(conn: Connection, wrapped: WrappedKey) -> Any:
    """The session object of `wrapped`'s PSK: the one held (while its KEK version is loaded), or
    a new one unwrapped into the token and held (hsm/psks.py)."""
    key = conn.psks.get(wrapped)
    if key is not None:
        if wrapped.kek_version in conn.versions_of(KEK):
            return key
        conn.psks.pop(wrapped)  # its KEK version was destroyed since (by another process)
        key.destroy()
        raise KeyVersionNotFound(f"{KEK.value} version {wrapped.kek_version} is not in the token")
    key = _unwrap_into_token(conn, wrapped)
    for old in conn.psks.put(wrapped, key):
        old.destroy()
    return key


def _unwrap_into_token(conn: Connection, wrapped: WrappedKey) -> Any:
    kek = conn.use(KEK, wrapped.kek_version)
    try:
        if wrapped.key_length >= PSK_HMAC_BYTES:
            return _unwrap_object(kek, wrapped.blob, PSK_IN_TOKEN)
        short = _unwrap_value(conn, kek, wrapped.blob)
        padded = short + bytes(PSK_HMAC_BYTES - len(short))
        return conn.session.create_object({**PSK_IN_TOKEN, Attribute.VALUE: padded})
    except p11e.GeneralError:
        # SoftHSM answers a blob that fails the RFC 3394 integrity check with CKR_GENERAL_ERROR;
        # it is bad input, not loss, when the token still answers.
        if conn.token_alive():
            raise WrappedKeyRejected(
                "PSK unwrap failed: the token rejected the wrapped key"
            ) from None
        raise


def _unwrap_value(conn: Connection, kek: Any, blob: bytes) -> bytes:
    """A short PSK's value, through a transient object destroyed at once."""
    if conn.direct is not None:
        with contextlib.suppress(DirectCallFailed):
            return conn.direct.unwrap_value(
                conn.session.handle, kek.handle, WRAP_MECHANISM, blob, TRANSIENT_PSK
            )
    obj = _unwrap_object(kek, blob, TRANSIENT_PSK)
    try:
        return bytes(obj[Attribute.VALUE])
    finally:
        obj.destroy()


def _unwrap_object(kek: Any, blob: bytes, template: dict[Attribute, Any]) -> Any:
    """C_UnwrapKey of a PSK blob into a session object of `template`."""
    return kek.unwrap_key(
        ObjectClass.SECRET_KEY,
        KeyType.GENERIC_SECRET,
        blob,
        mechanism=WRAP_MECHANISM,
        store=False,
        template=template,
    )


def _forget_psk(conn: Connection, wrapped: WrappedKey) -> None:
    key = conn.psks.pop(wrapped)
    if key is not None:
        with contextlib.suppress(p11e.PKCS11Error):  # best effort: nothing finds it any more
            key.destroy()


def _audit_hmac(conn: Connection, data: bytes) -> bytes:
    return _sign(conn, conn.use(AUDIT, conn.active_of(AUDIT)), AUDIT_MECHANISM, data)


def _random(conn: Connection, n: int) -> bytes:
    """C_GenerateRandom: directly (GIL held) when possible. python-pkcs11's own call is faster
    on one thread (628k vs 412k ops/s), but it releases the GIL under PKCS11_LOCK: in the
    multi-threaded server another handler then takes the GIL, blocks on the lock and hands the
    GIL back, two context switches per call, each dearer than the call."""
    session = conn.session
    if session is None:
        raise Disconnected
    direct = conn.direct
    if direct is not None:
        with contextlib.suppress(DirectCallFailed):
            return direct.random(session.handle, n)
    result: bytes = session.generate_random(n << 3)
    return result


def _wrap(conn: Connection, psk: bytes) -> WrappedKey:
    version = conn.active_of(KEK)
    kek = conn.use(KEK, version)
    obj = conn.session.create_object({**TRANSIENT_PSK, Attribute.VALUE: psk})
    try:
        blob = kek.wrap_key(obj, mechanism=WRAP_MECHANISM)
    finally:
        obj.destroy()
    return WrappedKey(kek_version=version, blob=bytes(blob))


def _versions(conn: Connection, name: KeyName) -> list[KeyVersionInfo]:
    found = conn.versions_of(name)
    active = max(found, default=0)
    return [
        KeyVersionInfo(name, v, KeyState.ACTIVE if v == active else KeyState.DECRYPT_ONLY)
        for v in sorted(found)
    ]


def _destroy(conn: Connection, args: tuple[KeyName, int]) -> None:
    conn.destroy(*args)


def _reload(conn: Connection, _: None) -> None:
    conn.reload_keys()
