"""The availability monitor of a Connection: loss detection, probing, recovery, listeners.

Rules and invariants:
- HSM loss (hsm/errors.py Kind.LOSS from any call, a udev remove, or a failed health check) marks
  the token unavailable and drops every handle at once (Connection.drop, no PKCS#11 call); calls
  then raise HsmUnavailable with the reason, without touching the token.
- probe() health-checks while available (C_GetTokenInfo plus a token-object read: with session
  copies SoftHSM keeps answering from memory after its token files vanish) and otherwise
  re-initialises the library, logs in, re-finds, re-checks and re-copies the keys. A monitor
  thread runs it every probe_interval.
- A login refused during recovery (wrong or locked PIN) halts automatic probing until
  device_added() or probe(force=True): retrying a wrong PIN would lock the token.
- Availability changes are queued under PKCS11_LOCK and handed to listeners
  (callback(available, reason)) by notify(), outside the lock; a failing listener is logged.
- Methods marked "lock held" are called with PKCS11_LOCK held; the others take it themselves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pkcs11 import exceptions as p11e

from firmware.core.errors import HsmUnavailable, KmsError
from hsm.connection import Connection
from hsm.errors import Kind, LoginRefused, classify, condition, to_kms_error
from hsm.lock import PKCS11_LOCK

log = logging.getLogger(__name__)

Listener = Callable[[bool, str], None]


class AvailabilityMonitor:
    """Whether the connection's token is usable, and the probing that finds out."""

    def __init__(
        self, connection: Connection, *, probe_interval: float, health_check: bool
    ) -> None:
        self._conn = connection
        self._interval = probe_interval
        self._health_check = health_check
        self.reason = "not started"
        self._halted: str | None = None
        self._available = threading.Event()
        self._listeners: list[Listener] = []
        self._pending: list[tuple[bool, str]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def available(self) -> bool:
        return self._available.is_set()

    def wait_until_available(self, timeout: float) -> bool:
        return self._available.wait(timeout)

    def unavailable(self) -> HsmUnavailable:
        return HsmUnavailable(f"HSM unavailable: {self.reason}")

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # --- state changes (lock held) ------------------------------------------------------------

    def failed(self, exc: p11e.PKCS11Error, doing: str) -> Exception:
        """The error to raise for `exc`; a loss marks the token lost first (lock held)."""
        kind = classify(exc)
        if kind is Kind.LOSS:
            self.lost(f"{doing}: {condition(exc)}")
        elif kind is Kind.OTHER:
            log.error("unexpected PKCS#11 error during %s: %s", doing, condition(exc))
        return to_kms_error(exc, doing)

    def lost(self, reason: str) -> None:
        """Drop every handle and mark unavailable (lock held)."""
        was = self._available.is_set()
        self._conn.drop()  # the session is stale; the library's re-initialisation closes it
        self._available.clear()
        self.reason = reason
        if was:
            log.warning("HSM unavailable: %s", reason)
            self._pending.append((False, reason))

    def connected(self) -> None:
        """The connection has just connected (lock held)."""
        self._halted = None
        self.reason = "available"
        if not self._available.is_set():
            self._available.set()
            log.info("HSM token %r available", self._conn.uri.token)
            self._pending.append((True, "available"))

    def closed(self) -> None:
        """The vault closed the connection (lock held); listeners are not told."""
        self._available.clear()
        self.reason = "closed"

    def notify(self) -> None:
        """Hand queued availability changes to the listeners (lock not held)."""
        with PKCS11_LOCK:
            events, self._pending = self._pending, []
        for available, reason in events:
            for listener in list(self._listeners):
                try:
                    listener(available, reason)
                except Exception:
                    log.exception("HSM availability listener failed")

    # --- probing ------------------------------------------------------------------------------

    def probe(self, *, force: bool = False) -> bool:
        """Health-check when available, recover when not; returns availability afterwards."""
        with PKCS11_LOCK:
            if force:
                self._halted = None
            if self._conn.connected:
                if self._health_check:
                    try:
                        self._conn.check_token()
                    except p11e.PKCS11Error as exc:
                        self.failed(exc, "health check")
            elif self._halted is None and self._conn.loaded:
                self._recover()
            result = self._available.is_set()
        self.notify()
        return result

    def device_removed(self, reason: str) -> None:
        """The hot-plug watcher saw the device go: mark lost (no PKCS#11 call)."""
        with PKCS11_LOCK:
            if self._conn.connected or self._available.is_set():
                self.lost(reason)
        self.notify()

    def device_added(self) -> None:
        """The device is (back) in: probe now; an inserted device is an operator action, so a
        refused login is tried once more."""
        with PKCS11_LOCK:
            self._halted = None
        if self._thread is not None:
            self._wake.set()
        else:
            self.probe()

    def _recover(self) -> None:
        try:
            self._conn.reinitialize()
        except p11e.PKCS11Error as exc:
            self.reason = f"re-initialising the library: {condition(exc)}"
            return
        try:
            self._conn.connect()
        except LoginRefused as exc:
            self._halted = str(exc)
            self.reason = f"{exc} (automatic retries stopped)"
            log.error("HSM recovery stopped: %s", exc)
        except KmsError as exc:
            self.reason = str(exc)
        else:
            self.connected()

    # --- the monitor thread -------------------------------------------------------------------

    def start(self) -> None:
        """Run probe() every probe_interval in a daemon thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hsm-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.probe()
            except Exception:
                log.exception("HSM probe failed")
