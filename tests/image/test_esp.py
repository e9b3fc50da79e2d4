"""ESP entries: boot counting names, the boot loader's order, one entry per slot, both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from image import esp
from image.esp import DirEsp, MtoolsEsp, entries, install_uki, parse_entry

from .conftest import needs_disk_tools


def test_parses_boot_counter_names_as_systemd_boot_writes_them() -> None:
    e = parse_entry("kmsnode-00000007-b+2-1.efi")
    assert e is not None and (e.seq, e.slot, e.tries_left, e.tries_done) == (7, "b", 2, 1)
    blessed = parse_entry("kmsnode-00000003-a.efi")
    assert blessed is not None and blessed.tries_left is None and not blessed.bad
    bad = parse_entry("kmsnode-00000009-a+0-3.efi")
    assert bad is not None and bad.bad
    assert parse_entry("kmsnode-7-a.efi") is None and parse_entry("other.efi") is None


def test_newest_install_boots_first_and_an_entry_out_of_tries_boots_last(tmp_path: Path) -> None:
    d = tmp_path / "EFI/Linux"
    d.mkdir(parents=True)
    for name in ("kmsnode-00000003-a.efi", "kmsnode-00000009-b+0-3.efi"):
        (d / name).write_bytes(b"x")
    boot = DirEsp(tmp_path)
    assert [e.slot for e in entries(boot)] == ["a", "b"]
    assert esp.default_slot(boot) == "a"
    (d / "kmsnode-00000009-b+0-3.efi").rename(d / "kmsnode-00000009-b+1-2.efi")
    assert esp.default_slot(boot) == "b"


def test_installing_a_slot_replaces_its_old_entry_and_leaves_the_other(tmp_path: Path) -> None:
    needs_disk_tools()
    img = tmp_path / "esp.img"
    loader, uki = tmp_path / "loader.efi", tmp_path / "uki.efi"
    loader.write_bytes(b"L")
    uki.write_bytes(b"U" * 5000)
    esp.make_esp_image(img, 2 << 20, loader, {"kmsnode-00000001-a.efi": uki}, 1767225600)
    boot = MtoolsEsp(str(img), 0)
    install_uki(boot, uki, "b", 2, 3)
    install_uki(boot, uki, "b", 5, 3)
    assert boot.list(esp.LINUX_DIR) == ["kmsnode-00000001-a.efi", "kmsnode-00000005-b+3.efi"]
    assert boot.read("EFI/Linux/kmsnode-00000005-b+3.efi") == uki.read_bytes()
    assert b"editor no" in boot.read("loader/loader.conf")


@pytest.mark.parametrize("line", ["editor no", "timeout menu-disabled", "auto-entries no"])
def test_loader_conf_offers_no_editor_no_menu_and_no_extra_entries(line: str) -> None:
    assert line in esp.LOADER_CONF.splitlines()
