"""The shipped units and udev rules: hardening gate with `systemd-analyze security --offline=true`.

The gate is an exposure of at most 2.0 (systemd-analyze's `--threshold` is exposure x 10). The host
runs systemd 252 (bookworm); the image's own systemd 257 re-checks the unit in the slow build test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from image.config import RECIPE_DIR

MAX_EXPOSURE = 2.0
UNIT = RECIPE_DIR / "kmsnode.service"


def analyze(root: Path, unit_text: str, threshold: int) -> tuple[int, float]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    d = root / "etc/systemd/system"
    d.mkdir(parents=True, exist_ok=True)
    (d / "kmsnode.service").write_text(unit_text)
    proc = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            f"--root={root}",
            f"--threshold={threshold}",
            "--no-pager",
            "kmsnode.service",
        ],
        capture_output=True,
        text=True,
    )
    m = re.search(
        r"Overall exposure level for kmsnode\.service: (\d+\.\d+)", proc.stdout + proc.stderr
    )
    if m is None:
        pytest.fail(f"no exposure score in systemd-analyze output: {proc.stderr[-400:]}")
    return proc.returncode, float(m.group(1))


def test_kmsnode_unit_exposure_is_at_most_2(tmp_path: Path) -> None:
    rc, exposure = analyze(tmp_path, UNIT.read_text(), int(MAX_EXPOSURE * 10))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}"
    assert rc == 0


def test_the_gate_fails_a_unit_without_hardening(tmp_path: Path) -> None:
    bare = "[Service]\nExecStart=/opt/kmsnode/bin/kmsnode serve\n"
    rc, exposure = analyze(tmp_path, bare, int(MAX_EXPOSURE * 10))
    assert exposure > MAX_EXPOSURE and rc != 0


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_unit_keeps_the_required_sandboxing() -> None:
    d = directives(UNIT.read_text())
    assert d["ProtectSystem"] == ["strict"]
    assert d["PrivateDevices"] == ["yes"] and d["DevicePolicy"] == ["closed"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["CapabilityBoundingSet"] == [""] and d["AmbientCapabilities"] == [""]
    assert "@system-service" in d["SystemCallFilter"]
    assert d["User"] == ["kmsnode"]
    assert any(v.startswith("hsm-pin:") for v in d["LoadCredential"])
    # state only on the state partition
    assert all(p.startswith("/var/lib/kmsnode/") for p in " ".join(d["ReadWritePaths"]).split())


def test_unit_allows_no_core_dump_and_descriptors_for_every_connection_listeners_allow() -> None:
    """Issue 10 item 4: LimitCORE=0 (a core would hold session keys and the PIN) besides the
    node's own RLIMIT_CORE/PR_SET_DUMPABLE; LimitNOFILE above the gRPC listeners' default caps."""
    from firmware.config import ListenerConfig

    d = directives(UNIT.read_text())
    assert d["LimitCORE"] == ["0"]
    default_cap = ListenerConfig.__dataclass_fields__["max_connections"].default
    assert int(d["LimitNOFILE"][0]) > 3 * int(default_cap)  # type: ignore[call-overload]


def test_udev_rules_give_the_hsm_to_the_service_group_and_tag_it_for_the_watcher() -> None:
    text = (RECIPE_DIR / "70-kmsnode-hsm.rules").read_text().replace("\\\n", " ")
    adds = [line for line in text.splitlines() if line.startswith('ACTION=="add')]
    assert adds
    for rule in adds:
        assert 'GROUP="kmsnode-hsm"' in rule and 'MODE="0660"' in rule
        assert 'ENV{KMSNODE_HSM}="1"' in rule and 'TAG+="systemd"' in rule
    removes = [line for line in text.splitlines() if line.startswith('ACTION=="remove"')]
    assert len(removes) == len(adds)


def test_sysusers_puts_the_service_user_in_the_hsm_group() -> None:
    text = (RECIPE_DIR / "kmsnode.sysusers").read_text()
    assert re.search(r"^m kmsnode kmsnode-hsm$", text, re.M)


def test_firstboot_never_puts_a_pin_on_a_command_line_of_the_node() -> None:
    text = (RECIPE_DIR / "kmsnode-firstboot").read_text()
    node_lines = [line for line in text.splitlines() if "$KMSNODE" in line and "dev-init" in line]
    assert node_lines and all("pin" not in line.lower() for line in node_lines)
