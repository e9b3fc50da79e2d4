"""The shipped units and udev rules: hardening gate with `systemd-analyze security --offline=true`.

The gate is an exposure of at most 2.0 (systemd-analyze's `--threshold` is exposure x 10), or the
limit a unit states in its own comment with the reason (`# systemd-analyze security: at most N.N,
justified: ...`). The host runs systemd 252 (bookworm); the image's own systemd 257 re-checks every
unit in the slow build test.
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
UNITS = sorted(p.name for p in RECIPE_DIR.glob("*.service"))
JUSTIFIED = re.compile(r"^# systemd-analyze security: at most (\d+\.\d), justified: \S", re.M)


def justified_limit(unit_text: str) -> float:
    """The exposure a unit may have: 2.0, or what its comment states with a reason."""
    m = JUSTIFIED.search(unit_text)
    return float(m.group(1)) if m else MAX_EXPOSURE


def analyze(
    root: Path, unit_text: str, threshold: int, name: str = "kmsnode.service"
) -> tuple[int, float]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    d = root / "etc/systemd/system"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(unit_text)
    proc = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            f"--root={root}",
            f"--threshold={threshold}",
            "--no-pager",
            name,
        ],
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    if m is None:
        pytest.fail(f"no exposure score in systemd-analyze output: {proc.stderr[-400:]}")
    return proc.returncode, float(m.group(1))


def test_kmsnode_unit_exposure_is_at_most_2(tmp_path: Path) -> None:
    rc, exposure = analyze(tmp_path, UNIT.read_text(), int(MAX_EXPOSURE * 10))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}"
    assert rc == 0


@pytest.mark.parametrize("unit", UNITS)
def test_every_shipped_unit_is_at_most_2_or_states_its_justified_limit(
    tmp_path: Path, unit: str
) -> None:
    text = (RECIPE_DIR / unit).read_text()
    limit = justified_limit(text)
    _rc, exposure = analyze(tmp_path, text, 100, unit)
    assert exposure <= limit, f"{unit}: exposure {exposure} > {limit}"
    if limit > MAX_EXPOSURE:  # a justified limit must be close to the truth, not a blank cheque
        assert exposure > limit - 1.0, f"{unit}: states {limit}, measures {exposure}"


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
    # the PIN only as a TPM-sealed credential, never a plain file
    assert "LoadCredential" not in d
    assert d["LoadCredentialEncrypted"] == ["hsm-pin:/var/lib/kmsnode/credentials/hsm-pin.cred"]
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


def test_kernel_settings_send_core_dumps_nowhere_and_restrict_ptrace_and_pointers() -> None:
    conf = dict(
        (k.strip(), v.strip())
        for k, _, v in (
            line.partition("=")
            for line in (RECIPE_DIR / "90-kmsnode.conf").read_text().splitlines()
            if line and not line.startswith("#")
        )
    )
    assert conf["kernel.core_pattern"] == "|/bin/false"
    assert conf["fs.suid_dumpable"] == "0"
    assert int(conf["kernel.yama.ptrace_scope"]) >= 2
    assert conf["kernel.kptr_restrict"] == "2"


def test_the_journal_is_persistent_and_time_comes_from_no_unconfigured_pool() -> None:
    assert "Storage=persistent" in (RECIPE_DIR / "journald.conf").read_text()
    t = (RECIPE_DIR / "timesyncd.conf").read_text().splitlines()
    assert "NTP=" in t and "FallbackNTP=" in t
