"""Pkcs11Vault: the node's KeyVault on a PKCS#11 token (python-pkcs11; SoftHSM2 in dev and CI).

Rules and invariants:
- No two PKCS#11 calls ever overlap in this process. python-pkcs11 0.10 calls C_Initialize(NULL)
  and releases the GIL around every C call; SoftHSM 2.6.1 then corrupts its heap when two threads
  call it (spec/perf-ceilings.md 1b). Every call (load, open, login, find, copy, crypto, destroy,
  close, finalize) runs inline under the one process-wide PKCS11_LOCK; anything else in the process
  that calls PKCS#11 must take it too. Inline calls under a lock were measured faster than handing
  calls to an owning thread, and threads never scale on SoftHSM (processes do: one vault per
  process, created after fork).
- One vault per process: recovery re-initialises the library (C_Finalize/C_Initialize), which
  closes every session of the process. The vault uses one read-write session that carries the
  login; session objects (hot-key copies, transient PSKs) belong to it.
- Long-term keys are found by label `<name>/v<version>` and checked by hsm/keycheck.py at every
  load (start, refresh, recovery) and after create_version: every template attribute as set,
  ALWAYS_SENSITIVE and NEVER_EXTRACTABLE true, one label per object. Start is refused otherwise
  (HsmConfigurationError naming the label and the attribute). Hot keys are used
  through session copies (C_CopyObject, still sensitive and non-extractable), made at load and on
  create_version, dropped with their session.
- The highest version of a name is ACTIVE, lower ones DECRYPT_ONLY; the cache is the truth between
  refresh() calls (create/destroy through this vault keep it current).
- HSM loss (hsm/errors.py Kind.LOSS, a udev remove, or a failed health check) marks the vault
  unavailable and drops every handle; calls then raise HsmUnavailable without touching the token.
  probe() re-initialises, logs in, re-finds and re-copies; a monitor thread runs it every
  probe_interval (also while available, as a health check: with session copies SoftHSM keeps
  answering from memory after its token files vanish, so only a token-object access notices).
- A login refused during recovery (wrong/locked PIN) stops automatic probing until device_added()
  or an explicit probe(force=True): retrying a wrong PIN would lock the token.
- The PIN is read from its PinSource when logging in and then dropped; it never appears in a
  log, an error or a repr.
- Availability changes go to listeners (callback(available, reason)) outside the lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.types import Session, SignMixin

from firmware.core.errors import (
    HsmConfigurationError,
    HsmUnavailable,
    KeyVersionNotFound,
    KmsError,
)
from firmware.core.ports import KeyName, KeyState, KeyVersionInfo, WrappedKey
from firmware.mikey.prf import PrfFunc, prf_with_hmac
from hsm.direct import DirectCallFailed, DirectCalls
from hsm.errors import (
    ActiveVersionRefused,
    Kind,
    LoginRefused,
    PskLengthError,
    WrappedKeyRejected,
    classify,
    condition,
    login_refused_types,
    to_kms_error,
)
from hsm.keycheck import check_key
from hsm.pin import PinSource
from hsm.templates import (
    AUDIT_MECHANISM,
    HMAC_MECHANISM,
    REQUIRED_MECHANISMS,
    SESSION_COPY,
    SPECS,
    TRANSIENT_PSK,
    WRAP_MECHANISM,
    key_label,
    parse_label,
)
from hsm.uri import Pkcs11Uri, parse_uri

log = logging.getLogger(__name__)

LOGIN_REFUSED = login_refused_types()

# The one process-wide lock around every PKCS#11 call (module docstring).
PKCS11_LOCK = threading.RLock()

Listener = Callable[[bool, str], None]


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
    required_mechanisms: frozenset[Mechanism] = REQUIRED_MECHANISMS
    health_check: bool = True
    direct_calls: bool = True  # hot calls through hsm/direct.py (GIL held; see there)


@dataclass
class _Key:
    token_obj: Any = field(repr=False)
    use: Any = field(repr=False)  # the session copy, or token_obj when copies are off


def mechanism_name(m: object) -> str:
    return f"CKM_{m.name}" if isinstance(m, Mechanism) else f"0x{int(m):08x}"  # type: ignore[call-overload]


def _check_psk(psk: bytes) -> None:
    if len(psk) < 16 or len(psk) % 8:
        raise PskLengthError(
            f"a PSK to wrap must be a multiple of 8 bytes and at least 16 (got {len(psk)})"
        )


class Pkcs11Vault:
    """KeyVault on a PKCS#11 token; see the module docstring for the rules."""

    def __init__(self, settings: VaultSettings) -> None:
        self._settings = settings
        self._uri: Pkcs11Uri = parse_uri(settings.token_uri)
        module = settings.module_path or self._uri.module_path
        if not module:
            raise HsmConfigurationError(
                "no PKCS#11 module: set module_path or module-path in the token URI"
            )
        self._module = module
        if settings.pin_source is not None:
            self._pin_source = settings.pin_source
        elif self._uri.pin_source:
            self._pin_source = PinSource.parse(self._uri.pin_source)
        else:
            raise HsmConfigurationError("no PIN source: set pin_source or pin-source in the URI")
        self._lib: Any = None
        self._direct: DirectCalls | None = None
        self._session: Any = None
        self._logged_in = False
        self._keys: dict[KeyName, dict[int, _Key]] = {}
        self._active: dict[KeyName, int] = {}
        self._mechanisms: frozenset[Any] = frozenset()
        self._reason = "not started"
        self._halted: str | None = None
        self._available = threading.Event()
        self._listeners: list[Listener] = []
        self._pending: list[tuple[bool, str]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- life cycle ---------------------------------------------------------------------------

    @classmethod
    def open(cls, settings: VaultSettings, *, monitor: bool = True) -> Pkcs11Vault:
        """Create and start a vault; raises HsmConfigurationError when it cannot serve."""
        vault = cls(settings)
        vault.start(monitor=monitor)
        return vault

    def start(self, *, monitor: bool = True) -> None:
        """Load the module, find the token, check mechanisms, log in, load keys."""
        with PKCS11_LOCK:
            try:
                self._lib = pkcs11.lib(self._module)
                self._direct = DirectCalls(self._module) if self._settings.direct_calls else None
            except p11e.PKCS11Error as exc:
                raise HsmConfigurationError(
                    f"cannot load the PKCS#11 module {self._module!r}: {condition(exc)}"
                ) from None
            self._connect()
        self._notify()
        if monitor:
            self.start_monitor()

    def start_monitor(self) -> None:
        """Run probe() every probe_interval in a daemon thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._monitor, name="hsm-probe", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the monitor, close the session (logging out), drop every handle."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with PKCS11_LOCK:
            session, self._session = self._session, None
            self._drop_handles()
            self._available.clear()
            self._reason = "closed"
            if session is not None:
                # Logs out when this session carried the login (python-pkcs11 Session.close).
                with contextlib.suppress(p11e.PKCS11Error):
                    session.close()

    def __enter__(self) -> Pkcs11Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_listener(self, listener: Listener) -> None:
        """`listener(available, reason)` is called on every availability change."""
        self._listeners.append(listener)

    # --- KeyVault -------------------------------------------------------------------------------

    def ticket_hmac(self, version: int, prf: PrfFunc, data: bytes) -> bytes:
        mech = HMAC_MECHANISM[prf]
        with PKCS11_LOCK:
            key: SignMixin = self._use(KeyName.TICKET_PROTECTION, version)
            try:
                return self._sign(key, mech, data)
            except p11e.PKCS11Error as exc:
                error = self._failed(exc, "ticket HMAC")
        self._notify()
        raise error

    def ticket_prf(self, version: int, prf: PrfFunc, label: bytes, out_len: int) -> bytes:
        mech = HMAC_MECHANISM[prf]
        with PKCS11_LOCK:
            key: SignMixin = self._use(KeyName.TICKET_PROTECTION, version)
            try:
                return prf_with_hmac(prf, lambda d: self._sign(key, mech, d), label, out_len)
            except p11e.PKCS11Error as exc:
                error = self._failed(exc, "ticket PRF")
        self._notify()
        raise error

    def wrap_psk(self, psk: bytes) -> WrappedKey:
        _check_psk(psk)
        with PKCS11_LOCK:
            version = self._active_of(KeyName.KEY_ENCRYPTION)
            kek = self._use(KeyName.KEY_ENCRYPTION, version)
            try:
                obj = self._session.create_object({**TRANSIENT_PSK, Attribute.VALUE: psk})
                try:
                    blob = kek.wrap_key(obj, mechanism=WRAP_MECHANISM)
                finally:
                    obj.destroy()
                return WrappedKey(kek_version=version, blob=bytes(blob))
            except p11e.PKCS11Error as exc:
                error = self._failed(exc, "PSK wrap")
        self._notify()
        raise error

    def unwrap_psk(self, wrapped: WrappedKey) -> bytes:
        blob = wrapped.blob
        if len(blob) < 24 or len(blob) % 8:
            raise WrappedKeyRejected(f"a wrapped PSK has a bad length ({len(blob)} bytes)")
        with PKCS11_LOCK:
            kek = self._use(KeyName.KEY_ENCRYPTION, wrapped.kek_version)
            try:
                if self._direct is not None and self._session is not None:
                    with contextlib.suppress(DirectCallFailed):
                        return self._direct.unwrap_value(
                            self._session.handle, kek.handle, WRAP_MECHANISM, blob, TRANSIENT_PSK
                        )
                obj = kek.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KeyType.GENERIC_SECRET,
                    blob,
                    mechanism=WRAP_MECHANISM,
                    store=False,
                    template=TRANSIENT_PSK,
                )
                try:
                    return bytes(obj[Attribute.VALUE])
                finally:
                    obj.destroy()
            except p11e.GeneralError as exc:
                # SoftHSM answers a blob that fails the RFC 3394 integrity check with
                # CKR_GENERAL_ERROR; it is bad input, not loss, when the token still answers.
                if self._token_alive():
                    raise WrappedKeyRejected(
                        "PSK unwrap failed: the token rejected the wrapped key"
                    ) from None
                error = self._failed(exc, "PSK unwrap")
            except p11e.PKCS11Error as exc:
                error = self._failed(exc, "PSK unwrap")
        self._notify()
        raise error

    def random_bytes(self, n: int) -> bytes:
        if n <= 0:
            if n == 0:
                return b""
            raise ValueError("random_bytes needs n >= 0")
        with PKCS11_LOCK:
            session: Session | None = self._session
            if session is None:
                raise self._unavailable()
            try:
                # python-pkcs11's own call is cheaper than a ctypes one for this single C call
                # (measured: 628k vs 412k ops/s), so random bytes do not take the direct path.
                return session.generate_random(n << 3)
            except p11e.PKCS11Error as exc:
                error = self._failed(exc, "random generation")
        self._notify()
        raise error

    def audit_hmac(self, data: bytes) -> bytes:
        with PKCS11_LOCK:
            key: SignMixin = self._use(KeyName.AUDIT, self._active_of(KeyName.AUDIT))
            try:
                return self._sign(key, AUDIT_MECHANISM, data)
            except p11e.PKCS11Error as exc:
                error = self._failed(exc, "audit HMAC")
        self._notify()
        raise error

    def versions(self, name: KeyName) -> list[KeyVersionInfo]:
        with PKCS11_LOCK:
            found = self._versions_of(name)
            active = max(found, default=0)
            return [
                KeyVersionInfo(name, v, KeyState.ACTIVE if v == active else KeyState.DECRYPT_ONLY)
                for v in sorted(found)
            ]

    def active_version(self, name: KeyName) -> int:
        with PKCS11_LOCK:
            return self._active_of(name)

    def create_version(self, name: KeyName) -> KeyVersionInfo:
        spec = SPECS[name]
        with PKCS11_LOCK:
            session = self._require_session()
            try:
                version = self._next_version(session, name)
                obj = session.generate_key(
                    spec.key_type,
                    spec.bits,
                    label=key_label(name, version),
                    id=key_label(name, version).encode(),
                    store=True,
                    mechanism=spec.gen_mechanism,
                    template=spec.template(version),
                )
                try:
                    check_key(obj, spec, version)
                except HsmConfigurationError:
                    obj.destroy()  # the token did not make the key as asked: leave nothing behind
                    raise
                self._add_key(name, version, obj)
            except p11e.PKCS11Error as exc:
                error = self._failed(exc, f"creating {key_label(name, version)}")
            else:
                log.info("created key %s in the HSM", key_label(name, version))
                return KeyVersionInfo(name, version, KeyState.ACTIVE)
        self._notify()
        raise error

    def destroy_version(self, name: KeyName, version: int) -> None:
        with PKCS11_LOCK:
            found = self._versions_of(name)
            if version not in found:
                raise KeyVersionNotFound(f"{key_label(name, version)} is not in the token")
            if version == self._active.get(name):
                raise ActiveVersionRefused(
                    f"{key_label(name, version)} is the active version; create a newer one first"
                )
            key = found[version]
            try:
                if key.use is not key.token_obj:
                    key.use.destroy()
                    key.use = key.token_obj
                key.token_obj.destroy()
            except p11e.PKCS11Error as exc:
                error = self._failed(exc, f"destroying {key_label(name, version)}")
            else:
                del found[version]
                log.info("destroyed key %s in the HSM", key_label(name, version))
                return
        self._notify()
        raise error

    def available(self) -> bool:
        return self._available.is_set()

    # --- beyond the port ----------------------------------------------------------------------

    def ensure_keys(self) -> list[KeyVersionInfo]:
        """Create version 1 of every key name that has no version yet (first start, dev init)."""
        created = []
        for name in KeyName:
            with PKCS11_LOCK:
                missing = not self._versions_of(name)
            if missing:
                created.append(self.create_version(name))
        return created

    def refresh(self) -> None:
        """Re-read the key versions from the token (after another process changed them)."""
        with PKCS11_LOCK:
            session = self._require_session()
            try:
                self._load_keys(session)
            except p11e.PKCS11Error as exc:
                error = self._failed(exc, "reading key versions")
            else:
                return
        self._notify()
        raise error

    def probe(self, *, force: bool = False) -> bool:
        """Check the token when available; re-initialise and log in again when not.

        Returns availability afterwards. `force` retries even after a refused login.
        """
        with PKCS11_LOCK:
            if force:
                self._halted = None
            if self._session is not None:
                if self._settings.health_check:
                    self._health_check()
            elif self._halted is None and self._lib is not None:
                self._recover()
            result = self._available.is_set()
        self._notify()
        return result

    def wait_until_available(self, timeout: float) -> bool:
        """Block until the vault is available or `timeout` seconds pass; returns availability."""
        return self._available.wait(timeout)

    def device_removed(self, reason: str = "HSM device removed") -> None:
        """The hot-plug watcher saw the device go: mark unavailable, drop handles (no PKCS#11)."""
        with PKCS11_LOCK:
            if self._session is not None or self._available.is_set():
                self._mark_lost(reason)
        self._notify()

    def device_added(self) -> None:
        """The hot-plug watcher saw the device (again): probe now (an inserted device is an
        operator action, so a refused login is tried once more)."""
        with PKCS11_LOCK:
            self._halted = None
        if self._thread is not None:
            self._wake.set()
        else:
            self.probe()

    @property
    def token_label(self) -> str:
        return self._uri.token

    @property
    def reason(self) -> str:
        """Why the vault is unavailable (or "available")."""
        return self._reason

    @property
    def mechanisms(self) -> list[str]:
        return sorted(mechanism_name(m) for m in self._mechanisms)

    # --- internals (called with PKCS11_LOCK held) ------------------------------------------------

    def _unavailable(self) -> HsmUnavailable:
        return HsmUnavailable(f"HSM unavailable: {self._reason}")

    def _require_session(self) -> Any:
        if self._session is None:
            raise self._unavailable()
        return self._session

    def _versions_of(self, name: KeyName) -> dict[int, _Key]:
        found = self._keys.get(name)
        if found is None:
            raise self._unavailable()
        return found

    def _active_of(self, name: KeyName) -> int:
        self._versions_of(name)
        active = self._active.get(name)
        if active is None:
            raise KeyVersionNotFound(f"the token has no version of {name.value}")
        return active

    def _sign(self, key: Any, mechanism: Any, data: bytes) -> bytes:
        """C_Sign under PKCS11_LOCK: directly (GIL held) when possible, else python-pkcs11."""
        if self._direct is not None and self._session is not None:
            with contextlib.suppress(DirectCallFailed):
                return self._direct.sign(self._session.handle, key.handle, mechanism, data)
        return bytes(key.sign(data, mechanism=mechanism))

    def _use(self, name: KeyName, version: int) -> Any:
        found = self._keys.get(name)
        if found is None:
            raise self._unavailable()
        key = found.get(version)
        if key is None:
            raise KeyVersionNotFound(f"{name.value} version {version} is not in the token")
        return key.use

    def _failed(self, exc: p11e.PKCS11Error, doing: str) -> Exception:
        kind = classify(exc)
        if kind is Kind.LOSS:
            self._mark_lost(f"{doing}: {condition(exc)}")
        elif kind is Kind.OTHER:
            log.error("unexpected PKCS#11 error during %s: %s", doing, condition(exc))
        return to_kms_error(exc, doing)

    def _drop_handles(self) -> None:
        self._keys = {}
        self._active = {}

    def _mark_lost(self, reason: str) -> None:
        was = self._available.is_set()
        self._session = None  # stale after loss; the library's re-initialisation closes it
        self._drop_handles()
        self._available.clear()
        self._reason = reason
        if was:
            log.warning("HSM unavailable: %s", reason)
            self._pending.append((False, reason))

    def _mark_available(self) -> None:
        self._reason = "available"
        if not self._available.is_set():
            self._available.set()
            log.info("HSM token %r available", self._uri.token)
            self._pending.append((True, "available"))

    def _notify(self) -> None:
        with PKCS11_LOCK:
            events, self._pending = self._pending, []
        for available, reason in events:
            for listener in list(self._listeners):
                try:
                    listener(available, reason)
                except Exception:
                    log.exception("HSM availability listener failed")

    def _find_token(self) -> Any:
        uri = self._uri
        tokens = [
            t
            for t in self._lib.get_tokens(token_label=uri.token)
            if (uri.manufacturer is None or t.manufacturer_id == uri.manufacturer)
            and (uri.serial is None or t.serial.decode(errors="replace").strip() == uri.serial)
            and (uri.model is None or t.model == uri.model)
        ]
        if not tokens:
            raise HsmConfigurationError(f"no PKCS#11 token matches token={uri.token!r}")
        if len(tokens) > 1:
            raise HsmConfigurationError(
                f"{len(tokens)} tokens match token={uri.token!r}; narrow the URI (serial=)"
            )
        return tokens[0]

    def _connect(self) -> None:
        """Find the token, check mechanisms, log in, load keys; raises KmsError subclasses."""
        try:
            token = self._find_token()
            mechanisms = frozenset(token.slot.get_mechanisms())
        except p11e.PKCS11Error as exc:
            raise to_kms_error(exc, f"looking up token {self._uri.token!r}") from None
        missing = sorted(mechanism_name(m) for m in self._settings.required_mechanisms - mechanisms)
        if missing:
            raise HsmConfigurationError(
                f"token {self._uri.token!r} does not offer required mechanism(s): "
                + ", ".join(missing)
            )
        pin = self._pin_source.read()
        try:
            try:
                session = token.open(rw=True, user_pin=pin)
                logged_in = True
            except p11e.UserAlreadyLoggedIn:
                session = token.open(rw=True)
                logged_in = False
        except LOGIN_REFUSED as exc:
            raise LoginRefused(
                f"token {self._uri.token!r} refused the login ({condition(exc)}); "
                f"check the PIN in {self._pin_source.describe()}"
            ) from None
        except p11e.PKCS11Error as exc:
            raise to_kms_error(exc, f"logging in to token {self._uri.token!r}") from None
        finally:
            del pin
        try:
            self._load_keys(session)
        except p11e.PKCS11Error as exc:
            with contextlib.suppress(p11e.PKCS11Error):
                session.close()
            raise to_kms_error(exc, "loading keys") from None
        except KmsError:
            with contextlib.suppress(p11e.PKCS11Error):
                session.close()
            raise
        self._session = session
        self._logged_in = logged_in
        self._mechanisms = mechanisms
        self._halted = None
        self._mark_available()

    def _recover(self) -> None:
        try:
            self._lib.reinitialize()
        except p11e.PKCS11Error as exc:
            self._reason = f"re-initialising the library: {condition(exc)}"
            return
        try:
            self._connect()
        except LoginRefused as exc:
            self._halted = str(exc)
            self._reason = f"{exc} (automatic retries stopped)"
            log.error("HSM recovery stopped: %s", exc)
        except KmsError as exc:
            self._reason = str(exc)

    def _check_token(self) -> None:
        """C_GetTokenInfo plus one token-object read; raises PKCS11Error when the token is gone."""
        self._session.token.slot.get_token()
        for versions in self._keys.values():
            for key in versions.values():
                key.token_obj[Attribute.LABEL]  # a token-object access notices lost files
                return

    def _token_alive(self) -> bool:
        if self._session is None:
            return False
        try:
            self._check_token()
        except p11e.PKCS11Error:
            return False
        return True

    def _health_check(self) -> None:
        try:
            self._check_token()
        except p11e.PKCS11Error as exc:
            self._failed(exc, "health check")

    def _next_version(self, session: Any, name: KeyName) -> int:
        on_token = set(self._scan(session).get(name, {}))
        return max(on_token | set(self._versions_of(name)), default=0) + 1

    def _scan(self, session: Any) -> dict[KeyName, dict[int, Any]]:
        found: dict[KeyName, dict[int, Any]] = {}
        query = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: True}
        for obj in list(session.get_objects(query)):
            parsed = parse_label(str(obj.label))
            if parsed is None:
                continue
            name, version = parsed
            if version in found.setdefault(name, {}):
                raise HsmConfigurationError(
                    f"two objects in the token are labelled {key_label(name, version)}"
                )
            found[name][version] = obj
        return found

    def _load_keys(self, session: Any) -> None:
        found = self._scan(session)
        keys: dict[KeyName, dict[int, _Key]] = {name: {} for name in KeyName}
        for name, versions in sorted(found.items()):
            for version, obj in sorted(versions.items()):
                check_key(obj, SPECS[name], version)
                use = obj.copy(SESSION_COPY) if self._settings.session_copies else obj
                keys[name][version] = _Key(obj, use)
        self._keys = keys
        self._active = {n: max(v) for n, v in keys.items() if v}

    def _add_key(self, name: KeyName, version: int, obj: Any) -> None:
        use = obj.copy(SESSION_COPY) if self._settings.session_copies else obj
        self._keys[name][version] = _Key(obj, use)
        self._active[name] = max(self._keys[name])

    def _monitor(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._settings.probe_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.probe()
            except Exception:
                log.exception("HSM probe failed")


def describe(vault: Pkcs11Vault) -> dict[str, Any]:
    """What the demo prints: token, availability, key versions with state, mechanisms."""
    keys: dict[str, list[dict[str, Any]]] = {}
    if vault.available():
        try:
            for name in KeyName:
                keys[name.value] = [
                    {"version": v.version, "state": v.state.name} for v in vault.versions(name)
                ]
        except HsmUnavailable:
            keys = {}
    return {
        "token": vault.token_label,
        "available": vault.available(),
        "reason": vault.reason,
        "keys": keys,
        "mechanisms": vault.mechanisms,
    }
