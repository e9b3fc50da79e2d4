"""Hot-plug watcher with real pyudev Device objects and real udev netlink events (umockdev)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import pyudev

from hsm.fake import FakeVault
from hsm.hotplug import HSM_REMOVED, HotplugWatcher, UdevMatch

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: has gi (UMockdev) and python3-pyudev


def test_in_a_umockdev_testbed_remove_and_add_of_the_hsm_reach_the_vault_and_others_do_not() -> (
    None
):
    if shutil.which("umockdev-wrapper") is None:
        pytest.fail("umockdev-wrapper missing (Debian packages umockdev, gir1.2-umockdev-1.0)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UMOCKDEV")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        ["umockdev-wrapper", SYSTEM_PYTHON, "-m", "tests.hsm.hotplug_driver"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [kind for kind, _ in result["alarms"]] == ["HSM_INSERTED", "HSM_REMOVED", "HSM_INSERTED"]
    assert all("/hsm0 " in detail for _, detail in result["alarms"])  # kbd0 was ignored
    assert result["steps"] == [
        ["plugged", True, True],
        ["removed", False, False],
        ["re-added", True, True],
    ]


def test_match_on_a_real_sysfs_device_checks_subsystem_and_properties() -> None:
    device = pyudev.Devices.from_sys_path(pyudev.Context(), "/sys/class/net/lo")
    assert UdevMatch("net", {"INTERFACE": "lo"}).matches(device)
    assert not UdevMatch("net", {"INTERFACE": "eth9"}).matches(device)
    assert not UdevMatch("usb", {"INTERFACE": "lo"}).matches(device)
    assert not UdevMatch("net", device_type="usb_device").matches(device)


def test_a_remove_of_a_device_seen_matching_before_counts_even_without_its_properties() -> None:
    context = pyudev.Context()
    lo = pyudev.Devices.from_sys_path(context, "/sys/class/net/lo")
    vault = FakeVault()
    alarms: list[str] = []
    watcher = HotplugWatcher(
        UdevMatch("net", {"INTERFACE": "lo"}), vault, alarm=lambda k, _d: alarms.append(k)
    )
    watcher.handle("add", lo)

    class Stripped:  # what a remove event may look like: same path, properties gone
        device_path = lo.device_path
        subsystem = "net"
        device_type = None
        properties: dict[str, str] = {}

    watcher.handle("remove", Stripped())
    assert not vault.available() and alarms == ["HSM_INSERTED", HSM_REMOVED]
