"""`kmsnode-image update` / `mark-good` / `status`: A/B update of a flashed kmsnode disk.

Why not RAUC install: RAUC's bundle format and signatures work here, but `rauc install` needs its
D-Bus service and activates verity bundles through device-mapper, which neither this host nor CI
has, so the write path could never be tested; RAUC also has no built-in anti-rollback counter.
This module keeps RAUC's semantics (verify the whole bundle first, write only the inactive slot,
switch by one atomic record, mark-good after a healthy boot) with the slot record in `bootstate`.

Invariants:
- Nothing is written before the bundle verified: signature (pinned key), product, security_version
  >= installed (no rollback), sizes, sha256, verity tree and root hash.
- Only the inactive slot's partitions are written. Before writing, the inactive slot is recorded as
  `empty` (so nothing falls back into a half-written slot); the active slot and the `active`
  pointer are untouched until the final record write.
- After writing: re-read from the target, check sha256 and verity again, then commit one
  bootstate record (active = new slot, state `pending`, old slot kept as fallback).
- The anti-rollback floor is raised only by `mark_good`.
- Slot choice: the slot written is the other one of the slot actually booted (the kernel command
  line of the running system when the target is its own disk, else the record's last healthy
  boot); it is refused when it holds the last good system while the running one is unproven.
- The boot entry: the written slot's UKI is removed from the ESP before its partitions are
  written and installed (with `+tries`) only after the read-back verified. `mark_good` blesses
  the booted entry, records a pending slot that lost its tries as `bad` and removes the entries
  of slots below the raised floor, so neither the boot loader nor `fallback` can go below it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from image import bootstate, esp, gpt
from image.bootstate import BAD, EMPTY, GOOD, PENDING, BootState, SlotState
from image.bundle import open_bundle
from image.errors import ImageError, TargetRefused, WriteFailed
from image.manifest import Manifest
from image.target import WriteHook, check_slot_free, copy_extent, drop_cache
from image.verify import Extent, check_artifact, check_manifest, check_verity, sha256_extent

PROC_CMDLINE = "/proc/cmdline"
MOUNTED_ESP = Path("/efi")


def status(target: str) -> BootState:
    layout = gpt.read_layout(target)
    state, _ = bootstate.read(target, layout["bootstate"].offset)
    return state


def running_slot(target: str, state: BootState, cmdline_path: str = PROC_CMDLINE) -> str | None:
    """The slot this system booted from, if `target` is the disk it booted from."""
    try:
        st = os.stat(target)
        words = Path(cmdline_path).read_text().split()
    except OSError:
        return None
    # first occurrence wins (the signed part comes first); bare words such as kmsnode.end skipped
    args: dict[str, str] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if eq and key.startswith("kmsnode.") and key not in args:
            args[key] = value
    slot, root_hash = args.get("kmsnode.slot"), args.get("kmsnode.roothash")
    if not stat.S_ISBLK(st.st_mode) or slot not in ("a", "b"):
        return None
    return slot if state.slots[slot].root_hash == root_hash else None


def booted_slot(target: str, state: BootState) -> str:
    return running_slot(target, state) or state.booted


def open_esp(target: str, layout: dict[str, gpt.Partition], running: bool) -> esp.Esp:
    """The mounted /efi on the running appliance (never bypass its FAT cache), else mtools."""
    if running:
        MOUNTED_ESP.joinpath("loader").exists()  # triggers the automount
        if not os.path.ismount(MOUNTED_ESP):
            raise TargetRefused(f"the ESP is not mounted at {MOUNTED_ESP}")
        return esp.DirEsp(MOUNTED_ESP)
    return esp.MtoolsEsp(target, layout["esp"].offset)


def choose_slot(state: BootState, booted: str) -> str:
    """The slot an update may write: never the booted one, never the last good one."""
    slot = state.other(booted)
    if state.slots[slot].state == GOOD and state.slots[booted].state != GOOD:
        raise TargetRefused(
            f"slot {slot} holds the last good system and the running slot {booted} is not marked "
            "good yet: let it pass its health check (or boot back) before updating"
        )
    return slot


def update(
    bundle_path: str,
    target: str,
    pinned: Ed25519PublicKey,
    product: str | None = None,
    hook: WriteHook | None = None,
    log: Callable[[str], None] = print,
    tries: int = esp.DEFAULT_TRIES,
    booted: str | None = None,
) -> BootState:
    layout = gpt.read_layout(target)
    bs_off = layout["bootstate"].offset
    state, _ = bootstate.read(target, bs_off)
    running = running_slot(target, state)
    booted = booted or running or state.booted
    slot = choose_slot(state, booted)
    root_part, tree_part = layout[f"root-{slot}"], layout[f"verity-{slot}"]
    check_slot_free(target, [root_part, tree_part])
    bundle = open_bundle(bundle_path)
    manifest = check_manifest(
        bundle.manifest_bytes,
        bundle.sig_bytes,
        pinned,
        product or state.product,
        state.installed_security_version(),
    )
    log(
        f"bundle signature OK: {manifest.product} {manifest.version} "
        f"(security_version {manifest.security_version})"
    )
    uki_name = f"uki-{slot}.efi"
    root_src, tree_src = bundle.members["root.img"], bundle.members["root.verity"]
    check_artifact(manifest, "root.img", root_src, exact=True)
    check_artifact(manifest, "root.verity", tree_src, exact=True)
    check_artifact(manifest, uki_name, bundle.members[uki_name], exact=True)
    check_verity(manifest, root_src, tree_src)
    log("bundle hashes and verity root hash OK")

    root_size, tree_size = (
        manifest.artifacts["root.img"].size,
        manifest.artifacts["root.verity"].size,
    )
    if root_size > root_part.size or tree_size > tree_part.size:
        raise TargetRefused(
            f"slot {slot} is too small: root {root_size}/{root_part.size}, "
            f"verity {tree_size}/{tree_part.size} bytes"
        )
    boot = open_esp(target, layout, running is not None)
    # The slot we are about to overwrite must be neither a boot entry nor a fallback target while
    # it is half-written.
    esp.remove_slot(boot, slot)
    slots = dict(state.slots)
    slots[slot] = SlotState()
    state = bootstate.write(target, bs_off, replace(state, slots=slots))
    log(f"writing slot {slot} (running slot {booted} untouched)")
    fd = os.open(target, os.O_WRONLY)
    try:
        copy_extent(root_src, root_size, fd, root_part.offset, "root.img", hook)
        copy_extent(tree_src, tree_size, fd, tree_part.offset, "root.verity", hook)
        drop_cache(fd)
    finally:
        os.close(fd)
    root_dst = Extent(target, root_part.offset, root_part.size)
    tree_dst = Extent(target, tree_part.offset, tree_part.size)
    try:
        check_artifact(manifest, "root.img", root_dst)
        check_artifact(manifest, "root.verity", tree_dst)
        check_verity(manifest, root_dst, tree_dst)
    except ImageError as exc:
        raise WriteFailed(
            f"read-back of slot {slot} failed, running slot unchanged: {exc}"
        ) from None
    slots[slot] = _slot_state(manifest, PENDING)
    new = bootstate.write(target, bs_off, replace(state, active=slot, slots=slots))
    _install_uki(boot, bundle.members[uki_name], manifest, uki_name, slot, new.seq, tries)
    log(
        f"switched to slot {slot} ({tries} boot tries until it is marked good; "
        f"slot {booted} kept for fallback)"
    )
    return new


def _install_uki(
    boot: esp.Esp, src: Extent, manifest: Manifest, name: str, slot: str, seq: int, tries: int
) -> None:
    """Copy the UKI out of the bundle, re-check it, install it, read it back from the ESP."""
    want = manifest.artifacts[name]
    with tempfile.TemporaryDirectory(prefix="kmsnode-uki-") as tmp:
        staged = Path(tmp) / name
        with open(src.path, "rb") as f, open(staged, "wb") as out:
            f.seek(src.offset)
            out.write(f.read(src.length))
        check_artifact(manifest, name, Extent(str(staged), 0, staged.stat().st_size), exact=True)
        entry = esp.install_uki(boot, staged, slot, seq, tries)
        back = Path(tmp) / "back"
        back.write_bytes(boot.read(f"{esp.LINUX_DIR}/{entry}"))
        if sha256_extent(Extent(str(back), 0, want.size), want.size) != want.sha256:
            boot.delete(f"{esp.LINUX_DIR}/{entry}")
            raise WriteFailed(f"read-back of the slot {slot} boot entry failed; entry removed")


def _slot_state(manifest: Manifest, state: str) -> SlotState:
    return SlotState(
        state=state,
        version=manifest.version,
        security_version=manifest.security_version,
        root_hash=manifest.verity.root_hash,
        root_size=manifest.artifacts["root.img"].size,
        verity_size=manifest.artifacts["root.verity"].size,
    )


def initial_state(manifest: Manifest) -> BootState:
    """The record a freshly built disk carries: slot a good, slot b empty."""
    return BootState(
        product=manifest.product,
        active="a",
        min_security_version=manifest.security_version,
        slots={"a": _slot_state(manifest, GOOD), "b": SlotState()},
    )


def mark_good(target: str, booted: str | None = None) -> BootState:
    """After a healthy boot: the booted slot becomes good and the rollback floor rises to it.

    A pending slot that is not the one booted lost its tries: it is recorded bad. Entries of slots
    below the new floor leave the ESP, and the booted entry loses its boot counter (blessed).
    """
    layout = gpt.read_layout(target)
    off = layout["bootstate"].offset
    state, _ = bootstate.read(target, off)
    running = running_slot(target, state)
    booted = booted or running or state.active
    cur = state.slots[booted]
    if cur.state in (EMPTY, BAD):
        raise TargetRefused(f"booted slot {booted} is {cur.state}")
    boot = open_esp(target, layout, running is not None)
    slots = dict(state.slots)
    slots[booted] = replace(cur, state=GOOD)
    floor = max(state.min_security_version, cur.security_version)
    other = state.other(booted)
    if slots[other].state == PENDING:
        slots[other] = replace(slots[other], state=BAD)
    if slots[other].state == BAD or slots[other].security_version < floor:
        esp.remove_slot(boot, other)
    for e in esp.entries(boot):
        if e.slot == booted and e.tries_left is not None:
            boot.rename(f"{esp.LINUX_DIR}/{e.name}", esp.entry_name(e.seq, booted, None))
    return bootstate.write(
        target,
        off,
        replace(state, active=booted, booted=booted, slots=slots, min_security_version=floor),
    )


def fallback(target: str, booted: str | None = None) -> BootState:
    """Give up the running slot: the other one boots next if it is good and not below the floor."""
    layout = gpt.read_layout(target)
    off = layout["bootstate"].offset
    state, _ = bootstate.read(target, off)
    running = running_slot(target, state)
    booted = booted or running or state.active
    other = state.other(booted)
    if state.slots[other].state != GOOD:
        raise TargetRefused(f"slot {other} is not a good fallback")
    if state.slots[other].security_version < state.min_security_version:
        raise TargetRefused(
            f"slot {other} (security_version {state.slots[other].security_version}) is below "
            f"the rollback floor {state.min_security_version}"
        )
    boot = open_esp(target, layout, running is not None)
    if other not in {e.slot for e in esp.entries(boot)}:
        raise TargetRefused(f"slot {other} has no boot entry")
    esp.remove_slot(boot, booted)
    slots = dict(state.slots)
    slots[booted] = SlotState()
    return bootstate.write(target, off, replace(state, active=other, slots=slots))
