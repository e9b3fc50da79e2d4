"""A/B update: verify first, write only the inactive slot, switch atomically, never roll back."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path

import pytest

from image import bootstate, gpt
from image.bootstate import BLOCK, BootState
from image.bundle import open_bundle
from image.errors import (
    BadManifest,
    Downgrade,
    HashMismatch,
    TargetRefused,
    Truncated,
    VerityMismatch,
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
    assert mark_good(str(flashed)).min_security_version == 6


def test_a_second_update_goes_back_to_slot_a(
    flashed: Path, release: ReleaseOutputs, release_next: ReleaseOutputs, keys: Keys
) -> None:
    update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    mark_good(str(flashed))
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
    mark_good(str(flashed))
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

    def crash(name: str, done: int) -> None:
        if name == artifact and done >= at:
            raise Crash("power cut")

    with pytest.raises(Crash):
        update(
            str(release_next.bundle), str(flashed), keys.signer.public_key(), hook=crash, log=quiet
        )
    state = status(str(flashed))
    assert state.active == "a" and state.slots["a"].state == "good"
    assert state.slots["b"].state == "empty"  # nothing will fall back into the half-written slot
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


def test_an_interrupted_update_over_a_previously_good_slot_b_never_falls_back_into_it(
    flashed: Path, release: ReleaseOutputs, release_next: ReleaseOutputs, keys: Keys
) -> None:
    """Issue 10 item 6: b good (1.1.0 installed and marked good), then a good again (1.1.0
    reinstalled into a); a power cut while b is rewritten must not leave b's old "good" behind
    for the boot loader to fall back into a half-written slot."""
    update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    mark_good(str(flashed))
    update(str(release_next.bundle), str(flashed), keys.signer.public_key(), log=quiet)
    state = mark_good(str(flashed))
    assert state.active == "a" and state.slots["b"].state == "good"
    a_before = slot_digest(flashed, "a")

    def crash(name: str, done: int) -> None:
        if name == "root.img" and done >= 1:
            raise Crash("power cut")

    with pytest.raises(Crash):
        update(
            str(release_next.bundle), str(flashed), keys.signer.public_key(), hook=crash, log=quiet
        )
    state = status(str(flashed))
    assert state.active == "a" and state.slots["a"].state == "good"
    assert state.slots["b"].state == "empty"
    with pytest.raises(TargetRefused, match="not a good fallback"):
        fallback(str(flashed))
    assert slot_digest(flashed, "a") == a_before
