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
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from image import bootstate, gpt
from image.bootstate import GOOD, PENDING, BootState, SlotState
from image.bundle import open_bundle
from image.errors import ImageError, TargetRefused, WriteFailed
from image.manifest import Manifest
from image.target import WriteHook, copy_extent, drop_cache
from image.verify import Extent, check_artifact, check_manifest, check_verity


def status(target: str) -> BootState:
    layout = gpt.read_layout(target)
    state, _ = bootstate.read(target, layout["bootstate"].offset)
    return state


def update(
    bundle_path: str,
    target: str,
    pinned: Ed25519PublicKey,
    product: str | None = None,
    hook: WriteHook | None = None,
    log: Callable[[str], None] = print,
) -> BootState:
    layout = gpt.read_layout(target)
    bs_off = layout["bootstate"].offset
    state, _ = bootstate.read(target, bs_off)
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
    root_src, tree_src = bundle.members["root.img"], bundle.members["root.verity"]
    check_artifact(manifest, "root.img", root_src, exact=True)
    check_artifact(manifest, "root.verity", tree_src, exact=True)
    check_verity(manifest, root_src, tree_src)
    log("bundle hashes and verity root hash OK")

    slot = state.other()
    root_part, tree_part = layout[f"root-{slot}"], layout[f"verity-{slot}"]
    root_size, tree_size = (
        manifest.artifacts["root.img"].size,
        manifest.artifacts["root.verity"].size,
    )
    if root_size > root_part.size or tree_size > tree_part.size:
        raise TargetRefused(
            f"slot {slot} is too small: root {root_size}/{root_part.size}, "
            f"verity {tree_size}/{tree_part.size} bytes"
        )
    # The slot we are about to overwrite must not be a fallback target while it is half-written.
    slots = dict(state.slots)
    slots[slot] = SlotState()
    state = bootstate.write(target, bs_off, replace(state, slots=slots))
    log(f"writing slot {slot} (active slot {state.active} untouched)")
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
            f"read-back of slot {slot} failed, active slot unchanged: {exc}"
        ) from None
    slots[slot] = _slot_state(manifest, PENDING)
    new = bootstate.write(target, bs_off, replace(state, active=slot, slots=slots))
    log(
        f"switched to slot {slot} (pending until marked good; slot {new.other()} kept for fallback)"
    )
    return new


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


def mark_good(target: str) -> BootState:
    """After a healthy boot: the active slot becomes good and the rollback floor rises to it."""
    layout = gpt.read_layout(target)
    state, _ = bootstate.read(target, layout["bootstate"].offset)
    cur = state.slots[state.active]
    if cur.state == bootstate.EMPTY:
        raise TargetRefused(f"active slot {state.active} is empty")
    slots = dict(state.slots)
    slots[state.active] = replace(cur, state=GOOD)
    floor = max(state.min_security_version, cur.security_version)
    return bootstate.write(
        target, layout["bootstate"].offset, replace(state, slots=slots, min_security_version=floor)
    )


def fallback(target: str) -> BootState:
    """What the boot loader does after failed boots of a pending slot: go back to the other one."""
    layout = gpt.read_layout(target)
    state, _ = bootstate.read(target, layout["bootstate"].offset)
    other = state.other()
    if state.slots[other].state != GOOD:
        raise TargetRefused(f"slot {other} is not a good fallback")
    slots = dict(state.slots)
    slots[state.active] = SlotState()
    return bootstate.write(
        target, layout["bootstate"].offset, replace(state, active=other, slots=slots)
    )
