"""A/B update: verify first, write only the inactive slot, switch atomically, never roll back."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from image import bootstate, esp, gpt
from image.bootstate import BLOCK, BootState
from image.bundle import open_bundle
from image.errors import (
    BadManifest,
    Downgrade,
    HashMismatch,
    TargetRefused,
    Truncated,
    VerityMismatch,
    WriteFailed,
    WrongKey,
    WrongProduct,
)
from image.release import ReleaseOutputs
from image.update import fallback, mark_good, status, update
from image.verify import Extent, check_artifact, check_verity

from .conftest import Keys, make_release


def quiet(_: str) -> None:
    pass


def slot_digest(disk: Path, slot: str) -> str:
    layout = gpt.read_layout(str(disk))
    h = hashlib.sha256()
    with open(disk, "rb") as f:
        for name in (f"root-{slot}", f"verity-{slot}"):
            f.seek(layout[name].offset)
            h.update(f.read(layout[name].size))
    return h.hexdigest()


def slot_verifies(disk: Path, slot: str, release: ReleaseOutputs) -> None:
    layout = gpt.read_layout(str(disk))
    root = Extent(str(disk), layout[f"root-{slot}"].offset, layout[f"root-{slot}"].size)
    tree = Extent(str(disk), layout[f"verity-{slot}"].offset, layout[f"verity-{slot}"].size)
    check_artifact(release.manifest, "root.img", root)
    check_verity(release.manifest, root, tree)


class Crash(Exception):
    pass


def boot_entries(disk: Path) -> list[str]:
    return esp.MtoolsEsp(str(disk), gpt.read_layout(str(disk))["esp"].offset).list(esp.LINUX_DIR)


def entry_slots(disk: Path) -> dict[str, esp.Entry]:
    boot = esp.MtoolsEsp(str(disk), gpt.read_layout(str(disk))["esp"].offset)
    return {e.slot: e for e in esp.entries(boot)}


def uki_of(disk: Path, slot: str) -> bytes:
    boot = esp.MtoolsEsp(str(disk), gpt.read_layout(str(disk))["esp"].offset)
    return boot.read(f"{esp.LINUX_DIR}/{entry_slots(disk)[slot].name}")


def test_update_writes_the_inactive_slot_and_switches(
    flashed: Path, release: ReleaseOutputs, release_next: ReleaseOutputs, keys: Keys
) -> None:
    a_before = slot_digest(flashed, "a")
    state = update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    assert state.active == "b"
    assert state.slots["b"].state == "pending" and state.slots["b"].version == "1.1.0"
    assert state.slots["a"].state == "good"  # kept for fallback
    assert slot_digest(flashed, "a") == a_before
    slot_verifies(flashed, "b", release_next)
    assert state.min_security_version == 5  # floor rises only when the new slot is marked good
    # the new slot's own UKI, with boot counting; the factory entry of slot a is kept for fallback
    entries = entry_slots(flashed)
    assert entries["b"].tries_left == 3 and entries["a"].tries_left is None
    assert b"kmsnode.slot=b" in uki_of(flashed, "b")
    assert release_next.manifest.verity.root_hash.encode() in uki_of(flashed, "b")
    assert (
        esp.default_slot(esp.MtoolsEsp(str(flashed), gpt.read_layout(str(flashed))["esp"].offset))
        == "b"
    )
    good = mark_good(str(flashed), booted="b")
    assert good.min_security_version == 6
    # blessed, and slot a (security_version 5) is below the floor: no longer bootable
    assert boot_entries(flashed) == [esp.entry_name(entries["b"].seq, "b", None)]


def test_a_second_update_goes_back_to_slot_a(
    flashed: Path, release: ReleaseOutputs, release_next: ReleaseOutputs, keys: Keys
) -> None:
    update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    mark_good(str(flashed), booted="b")
    b_before = slot_digest(flashed, "b")
    state = update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    assert state.active == "a" and slot_digest(flashed, "b") == b_before


def test_refuses_a_downgrade_and_writes_nothing(
    flashed: Path, release_old: ReleaseOutputs, keys: Keys
) -> None:
    before = flashed.read_bytes()
    with pytest.raises(Downgrade, match="security_version 4 is lower than the installed 5"):
        update(str(release_old.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    assert flashed.read_bytes() == before


def test_refuses_a_downgrade_below_the_floor_after_mark_good(
    flashed: Path, release_next: ReleaseOutputs, release: ReleaseOutputs, keys: Keys
) -> None:
    update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    mark_good(str(flashed), booted="b")
    with pytest.raises(Downgrade):
        update(str(release.bundle), str(flashed), keys.signer.public_key(), log=quiet)


def test_accepts_a_reinstall_of_the_same_security_version(
    flashed: Path, release: ReleaseOutputs, keys: Keys
) -> None:
    assert (
        update(str(release.bundle), str(flashed), keys.signer.public_key(), log=quiet).active == "b"
    )


def test_refuses_a_bundle_signed_by_another_key(tmp_path: Path, flashed: Path, keys: Keys) -> None:
    rel = make_release(tmp_path / "rel", keys.other, "2.0.0", 9, seed=9)
    before = flashed.read_bytes()
    with pytest.raises(WrongKey):
        update(str(rel.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    assert flashed.read_bytes() == before


def test_refuses_a_bundle_for_another_product(tmp_path: Path, flashed: Path, keys: Keys) -> None:
    rel = make_release(tmp_path / "rel", keys.signer, "2.0.0", 9, product="othernode", seed=9)
    before = flashed.read_bytes()
    with pytest.raises(WrongProduct):
        update(str(rel.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    assert flashed.read_bytes() == before


@pytest.mark.parametrize(
    ("member", "into"),
    [
        ("manifest.json", -100),
        ("manifest.json", 10),
        ("manifest.sig", 10),
        ("root.img", 100_000),
        ("root.verity", 100),
    ],
    ids=["in-header", "in-manifest", "in-signature", "in-root", "in-verity"],
)
def test_refuses_a_truncated_bundle_and_writes_nothing(
    tmp_path: Path, flashed: Path, release_next: ReleaseOutputs, keys: Keys, member: str, into: int
) -> None:
    cut = tmp_path / "cut.kmsupd"
    ext = open_bundle(str(release_next.bundle)).members[member]
    cut.write_bytes(release_next.bundle.read_bytes()[: ext.offset + into])
    before = flashed.read_bytes()
    with pytest.raises((Truncated, BadManifest)):
        update(str(cut), str(flashed), keys.signer.public_key(), log=quiet)
    assert flashed.read_bytes() == before


def test_refuses_a_bundle_with_one_changed_byte_in_the_root(
    tmp_path: Path, flashed: Path, release_next: ReleaseOutputs, keys: Keys
) -> None:
    bad = tmp_path / "bad.kmsupd"
    shutil.copy2(release_next.bundle, bad)
    ext = open_bundle(str(bad)).members["root.img"]
    with open(bad, "r+b") as f:
        f.seek(ext.offset + 4096 * 7 + 3)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(HashMismatch, match=r"root\.img"):
        update(str(bad), str(flashed), keys.signer.public_key(), log=quiet)


def test_refuses_a_verity_tree_that_does_not_match_the_root(
    tmp_path: Path, release_next: ReleaseOutputs
) -> None:
    other_tree = Extent(
        str(release_next.bundle),
        open_bundle(str(release_next.bundle)).members["root.img"].offset,
        4096 * 8,
    )
    root = open_bundle(str(release_next.bundle)).members["root.img"]
    with pytest.raises(VerityMismatch):
        check_verity(release_next.manifest, root, other_tree)


def test_refuses_a_bundle_with_an_extra_member(
    tmp_path: Path, release_next: ReleaseOutputs
) -> None:
    bad = tmp_path / "extra.kmsupd"
    shutil.copy2(release_next.bundle, bad)
    with tarfile.open(bad, "a") as t:
        t.add(release_next.manifest_path, arcname="evil.sh")
    with pytest.raises(BadManifest, match="unexpected"):
        open_bundle(str(bad))


def update_cut_at(
    disk: Path, release: ReleaseOutputs, keys: Keys, artifact: str, at: int
) -> BootState:
    """An update of `disk` to `release` whose power is cut once `at` bytes of `artifact` are
    written; the boot state the disk is left with."""

    def crash(name: str, done: int) -> None:
        if name == artifact and done >= at:
            raise Crash("power cut")

    with pytest.raises(Crash):
        update(str(release.bundle), str(disk), keys.signer.public_key(), hook=crash, log=quiet)
    return status(str(disk))


@pytest.mark.parametrize(
    ("artifact", "at"), [("root.img", 1), ("root.img", 600_000), ("root.verity", 1)]
)
def test_interrupted_write_leaves_the_active_slot_bootable(
    flashed: Path,
    release: ReleaseOutputs,
    release_next: ReleaseOutputs,
    keys: Keys,
    artifact: str,
    at: int,
) -> None:
    a_before = slot_digest(flashed, "a")

    state = update_cut_at(flashed, release_next, keys, artifact, at)
    assert state.active == "a" and state.slots["a"].state == "good"
    assert state.slots["b"].state == "empty"  # nothing will fall back into the half-written slot
    assert set(entry_slots(flashed)) == {"a"}  # and the boot loader has nothing to boot there
    assert slot_digest(flashed, "a") == a_before
    slot_verifies(flashed, "a", release)
    # and the next attempt completes
    assert (
        update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet).active
        == "b"
    )


def test_boot_record_survives_a_torn_write_of_the_new_copy(flashed: Path) -> None:
    off = gpt.read_layout(str(flashed))["bootstate"].offset
    current, winner = bootstate.read(str(flashed), off)
    # A torn write hits only the losing copy: half a record of a newer sequence number.
    from dataclasses import replace

    half = bootstate.encode(replace(current, active="b", seq=current.seq + 1))[:40]
    with open(flashed, "r+b") as f:
        f.seek(off + (1 - winner) * BLOCK)
        f.write(half)
    assert bootstate.read(str(flashed), off)[0] == current


def test_boot_record_falls_back_to_the_other_copy_when_the_newest_is_corrupt(
    flashed: Path, release_next: ReleaseOutputs, keys: Keys
) -> None:
    off = gpt.read_layout(str(flashed))["bootstate"].offset
    before = status(str(flashed))
    update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    _, winner = bootstate.read(str(flashed), off)
    with open(flashed, "r+b") as f:
        f.seek(off + winner * BLOCK + 20)
        f.write(b"\xff")
    survivor: BootState = bootstate.read(str(flashed), off)[0]
    assert survivor.active == before.active  # the older, intact record (slot a)


def test_fallback_returns_to_the_good_slot_after_a_failed_pending_boot(
    flashed: Path, release_next: ReleaseOutputs, keys: Keys
) -> None:
    update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    state = fallback(str(flashed))
    assert (
        state.active == "a"
        and state.slots["b"].state == "empty"
        and state.min_security_version == 5
    )
    assert set(entry_slots(flashed)) == {"a"}


def test_fallback_never_switches_below_the_rollback_floor(
    flashed: Path, release_next: ReleaseOutputs, keys: Keys
) -> None:
    update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    mark_good(str(flashed), booted="b")  # floor 6; slot a holds security_version 5
    before = flashed.read_bytes()
    with pytest.raises(TargetRefused, match="below the rollback floor"):
        fallback(str(flashed), booted="b")
    assert flashed.read_bytes() == before


def test_update_never_overwrites_the_last_good_slot_while_the_running_one_is_unproven(
    flashed: Path, release_next: ReleaseOutputs, keys: Keys
) -> None:
    # b was installed and is running (booted) but not marked good yet; a is the last good one.
    update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    before = flashed.read_bytes()
    with pytest.raises(TargetRefused, match="last good"):
        update(
            str(release_next.bundle),
            str(flashed),
            keys.signer.public_key(),
            log=quiet,
            booted="b",
        )
    assert flashed.read_bytes() == before


def test_update_writes_the_slot_that_is_not_booted_even_when_the_record_says_otherwise(
    flashed: Path, release_next: ReleaseOutputs, keys: Keys
) -> None:
    # Installed into b, which has not booted yet: a second update rewrites b, never running a.
    update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    a_before = slot_digest(flashed, "a")
    state = update(
        str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet, booted="a"
    )
    assert state.active == "b" and slot_digest(flashed, "a") == a_before


def test_mark_good_after_the_boot_loader_fell_back_records_the_pending_slot_bad(
    flashed: Path, release_next: ReleaseOutputs, keys: Keys
) -> None:
    update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    # b used up its tries; systemd-boot booted a, whose health gate passed
    state = mark_good(str(flashed), booted="a")
    assert state.active == "a" and state.booted == "a"
    assert state.slots["b"].state == "bad" and state.min_security_version == 5
    assert set(entry_slots(flashed)) == {"a"}


def test_a_write_that_corrupts_bytes_is_caught_by_the_read_back_and_nothing_switches(
    flashed: Path, release: ReleaseOutputs, release_next: ReleaseOutputs, keys: Keys
) -> None:
    layout = gpt.read_layout(str(flashed))
    a_before = slot_digest(flashed, "a")

    def corrupt(name: str, done: int) -> None:
        if name == "root.img" and done == 1 << 20:
            with open(flashed, "r+b") as f:  # a flaky medium: one written byte comes back wrong
                f.seek(layout["root-b"].offset + 4242)
                b = f.read(1)
                f.seek(-1, 1)
                f.write(bytes([b[0] ^ 0x01]))

    with pytest.raises(WriteFailed, match="read-back of slot b"):
        update(
            str(release_next.bundle),
            str(flashed),
            keys.signer.public_key(),
            hook=corrupt,
            log=quiet,
        )
    state = status(str(flashed))
    assert state.active == "a" and state.slots["b"].state == "empty"
    assert set(entry_slots(flashed)) == {"a"}
    assert slot_digest(flashed, "a") == a_before
    slot_verifies(flashed, "a", release)


def test_an_interrupted_update_over_a_previously_good_slot_b_never_falls_back_into_it(
    flashed: Path, release: ReleaseOutputs, release_next: ReleaseOutputs, keys: Keys
) -> None:
    # b good (1.1.0 installed and marked good), then a good again (1.1.0 reinstalled into a)
    update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    mark_good(str(flashed), booted="b")
    update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    state = mark_good(str(flashed), booted="a")
    assert state.slots["b"].state == "good" and set(entry_slots(flashed)) == {"a", "b"}
    a_before = slot_digest(flashed, "a")

    state = update_cut_at(flashed, release_next, keys, "root.img", 1)
    assert state.active == "a" and state.slots["a"].state == "good"
    assert state.slots["b"].state == "empty"  # b's old "good" must not survive a half-write
    assert set(entry_slots(flashed)) == {"a"}  # neither its boot entry
    with pytest.raises(TargetRefused, match="not a good fallback"):
        fallback(str(flashed), booted="a")
    assert slot_digest(flashed, "a") == a_before


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mkfs.ext4") is None,
    reason="needs root and mkfs.ext4 for a loop mount",
)
def test_refuses_a_mounted_target(
    tmp_path: Path, flashed: Path, release_next: ReleaseOutputs, keys: Keys
) -> None:
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    state = gpt.read_layout(str(flashed))["state"]
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", f"offset={state.offset}", str(flashed), "1024"],
        check=True,
    )
    mount = subprocess.run(
        ["mount", "-o", f"loop,offset={state.offset}", str(flashed), str(mnt)],
        capture_output=True,
    )
    if mount.returncode != 0:
        pytest.skip("loop mounts are not available here")
    try:
        before = slot_digest(flashed, "b")
        with pytest.raises(TargetRefused, match="mounted"):
            update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
        assert slot_digest(flashed, "b") == before
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_sigterm_during_update_prints_one_line_and_leaves_the_running_slot(
    flashed: Path,
    release: ReleaseOutputs,
    release_next: ReleaseOutputs,
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import signal

    import image.update
    from image.cli import main

    real = image.update.copy_extent

    def copy_then_term(*args: object, **kw: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(image.update, "copy_extent", copy_then_term)
    rc = main(
        [
            "update",
            "--bundle",
            str(release_next.bundle),
            "--target",
            str(flashed),
            "--pubkey",
            str(keys.public_pem),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 130
    assert err == (
        "kmsnode-image: interrupted (SIGTERM): the running slot is untouched; "
        "the slot being written is not bootable\n"
    )
    state = status(str(flashed))
    assert state.active == "a" and state.slots["b"].state == "empty"
    assert set(entry_slots(flashed)) == {"a"}
    slot_verifies(flashed, "a", release)


def test_the_running_slot_is_read_from_the_signed_command_line(
    tmp_path: Path, flashed: Path, release: ReleaseOutputs
) -> None:
    import subprocess

    from image.uki import cmdline
    from image.update import running_slot

    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup for a block device target")
    loop = subprocess.run(
        ["losetup", "-f", "--show", str(flashed)], capture_output=True, text=True
    ).stdout.strip()
    if not loop:
        pytest.skip("no loop device")
    try:
        state = status(loop)
        line = tmp_path / "cmdline"
        signed = cmdline(release.manifest.verity, "a")
        line.write_text(signed + "\n")
        assert running_slot(loop, state, str(line)) == "a"
        # a later word cannot move the booted slot (the initramfs refuses such a line anyway)
        line.write_text(signed + " kmsnode.slot=b\n")
        assert running_slot(loop, state, str(line)) == "a"
        # another system's root hash: this disk is not the one running
        line.write_text(signed.replace(release.manifest.verity.root_hash, "0" * 64) + "\n")
        assert running_slot(loop, state, str(line)) is None
        assert running_slot(str(flashed), state, str(line)) is None  # a file is never running
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
