"""Hot-plug of the HSM device: a pyudev watcher feeding remove/add into the vault.

Rules:
- The HSM device is named by a udev match (subsystem, optional DEVTYPE, properties such as
  ID_VENDOR_ID / ID_MODEL_ID of a USB token); nothing else on the bus is acted on.
- remove of a matching device (or of a device path seen matching before, since a remove event may
  carry fewer properties): `target.device_removed(reason)` (the vault turns unavailable and drops
  its handles) and the alarm `HSM_REMOVED`. add: `target.device_added()` (the vault re-initialises
  PKCS#11 and logs in again) and the alarm `HSM_INSERTED`. Other actions are ignored.
- The udev watcher is a hint, not the truth: the vault's probe also notices loss and return.
- This module imports no PKCS#11 code, so it runs wherever pyudev does (tests drive it inside a
  umockdev testbed with real pyudev Device objects and real netlink events).
- Callbacks run on the watcher thread; a failing callback is logged and the watcher goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyudev

log = logging.getLogger(__name__)

HSM_REMOVED = "HSM_REMOVED"
HSM_INSERTED = "HSM_INSERTED"

Alarm = Callable[[str, str], None]  # (HSM_REMOVED | HSM_INSERTED, detail)


class HotplugTarget(Protocol):
    def device_removed(self, reason: str) -> None: ...

    def device_added(self) -> None: ...


@dataclass(frozen=True)
class UdevMatch:
    """Which udev device is the HSM."""

    subsystem: str
    properties: Mapping[str, str] = field(default_factory=dict)
    device_type: str | None = None

    @classmethod
    def usb(cls, vendor_id: str, product_id: str) -> UdevMatch:
        """A USB token by vendor/product id (hex, as udev's ID_VENDOR_ID / ID_MODEL_ID)."""
        return cls(
            "usb",
            {"ID_VENDOR_ID": vendor_id.lower(), "ID_MODEL_ID": product_id.lower()},
            device_type="usb_device",
        )

    def matches(self, device: Any) -> bool:
        if device.subsystem != self.subsystem:
            return False
        if self.device_type is not None and device.device_type != self.device_type:
            return False
        props = device.properties
        return all(props.get(k) == v for k, v in self.properties.items())


class HotplugWatcher:
    """Watches udev (netlink) for the HSM device and tells the vault; see the module docstring."""

    def __init__(
        self,
        match: UdevMatch,
        target: HotplugTarget,
        *,
        alarm: Alarm | None = None,
        source: str = "udev",
        poll_timeout: float = 0.25,
    ) -> None:
        self._match = match
        self._target = target
        self._alarm = alarm
        self._source = source
        self._poll_timeout = poll_timeout
        self._known: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._monitor: Any = None

    def start(self) -> None:
        """Open the netlink monitor, note matching devices present now, start the thread."""
        context = pyudev.Context()
        monitor = pyudev.Monitor.from_netlink(context, source=self._source)
        monitor.filter_by(subsystem=self._match.subsystem)
        monitor.start()
        self._monitor = monitor
        for device in context.list_devices(subsystem=self._match.subsystem):
            if self._match.matches(device):
                self._known.add(device.device_path)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hsm-hotplug", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def present(self) -> bool:
        """Whether a matching device is known to be plugged in."""
        return bool(self._known)

    def handle(self, action: str | None, device: Any) -> None:
        """Act on one udev event (the thread calls this for every event it receives)."""
        path = device.device_path
        if not (self._match.matches(device) or path in self._known):
            return
        if action == "remove":
            self._known.discard(path)
            detail = f"HSM device {path} removed"
            log.warning("%s", detail)
            self._call(self._target.device_removed, detail)
            self._raise(HSM_REMOVED, detail)
        elif action == "add":
            self._known.add(path)
            detail = f"HSM device {path} added"
            log.info("%s", detail)
            self._call(self._target.device_added)
            self._raise(HSM_INSERTED, detail)

    def _run(self) -> None:
        monitor = self._monitor
        while not self._stop.is_set():
            try:
                device = monitor.poll(timeout=self._poll_timeout)
            except Exception:
                log.exception("udev monitor failed")
                self._stop.wait(self._poll_timeout)
                continue
            if device is not None:
                self.handle(device.action, device)

    def _call(self, fn: Callable[..., None], *args: str) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("hot-plug callback failed")

    def _raise(self, kind: str, detail: str) -> None:
        if self._alarm is not None:
            self._call(self._alarm, kind, detail)
