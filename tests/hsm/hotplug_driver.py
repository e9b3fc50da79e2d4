"""Child process for the hot-plug test; runs under `umockdev-wrapper` with Debian's python3.

It builds a umockdev testbed, starts our HotplugWatcher (real pyudev Monitor on netlink, real
Device objects) feeding a FakeVault, plugs an unrelated USB device and the HSM, removes and
re-adds them, and prints one JSON object: the alarms raised and the availability seen after each
step. Every wait is bounded.
"""

from __future__ import annotations

import json
import sys
import threading

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # noqa: E402

from hsm.fake import FakeVault  # noqa: E402
from hsm.hotplug import HotplugWatcher, UdevMatch  # noqa: E402

BOUND = 10.0


def main() -> int:
    testbed = UMockdev.Testbed.new()
    vault = FakeVault()
    alarms: list[list[str]] = []
    cond = threading.Condition()

    def alarm(kind: str, detail: str) -> None:
        with cond:
            alarms.append([kind, detail])
            cond.notify_all()

    def wait_alarms(n: int) -> None:
        with cond:
            if not cond.wait_for(lambda: len(alarms) >= n, timeout=BOUND):
                raise SystemExit(f"timed out waiting for alarm {n}; have {alarms}")

    def usb(name: str, vid: str, pid: str) -> str:
        path: str = testbed.add_device(
            "usb",
            name,
            None,
            ["idVendor", vid, "idProduct", pid],
            ["ID_VENDOR_ID", vid, "ID_MODEL_ID", pid, "DEVTYPE", "usb_device"],
        )
        return path

    watcher = HotplugWatcher(UdevMatch.usb("20A0", "4230"), vault, alarm=alarm)
    watcher.start()
    steps: list[list[object]] = []
    other = usb("kbd0", "046d", "c31c")
    hsm = usb("hsm0", "20a0", "4230")
    wait_alarms(1)
    steps.append(["plugged", vault.available(), watcher.present()])
    testbed.uevent(other, "remove")
    testbed.uevent(hsm, "remove")
    wait_alarms(2)
    steps.append(["removed", vault.available(), watcher.present()])
    testbed.uevent(hsm, "add")
    wait_alarms(3)
    steps.append(["re-added", vault.available(), watcher.present()])
    watcher.stop()
    print(json.dumps({"alarms": alarms, "steps": steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
