"""`kmsnode-image flash`: verified before and after writing; every refusal writes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from image import bootstate, gpt
from image.cli import main
from image.errors import BadSignature, HashMismatch, TargetRefused, Truncated, WrongKey
from image.flash import flash
from image.release import ReleaseOutputs

from .conftest import Keys


def quiet(_: str) -> None:
    pass


def copy_release(release: ReleaseOutputs, dest: Path) -> Path:
    dest.mkdir()
    for p in (release.disk, release.manifest_path, release.sig_path):
        shutil.copy2(p, dest / p.name)
    return dest / release.disk.name


def test_flashes_to_a_new_file_and_reads_back_identical_bytes(
    tmp_path: Path, release: ReleaseOutputs, keys: Keys
) -> None:
    target = tmp_path / "t.img"
    m = flash(str(release.disk), str(target), keys.signer.public_key(), "kmsnode", log=quiet)
    assert target.read_bytes() == release.disk.read_bytes()
    state, _ = bootstate.read(str(target), gpt.read_layout(str(target))["bootstate"].offset)
    assert (state.active, state.slots["a"].state, state.slots["a"].root_hash) == (
        "a",
        "good",
        m.verity.root_hash,
    )


def test_flashes_into_a_larger_presized_disk_file(
    tmp_path: Path, release: ReleaseOutputs, keys: Keys
) -> None:
    target = tmp_path / "t.img"
    size = release.disk.stat().st_size
    with open(target, "wb") as f:
        f.truncate(size + (8 << 20))
    flash(str(release.disk), str(target), keys.signer.public_key(), "kmsnode", log=quiet)
    assert target.read_bytes()[:size] == release.disk.read_bytes()


def test_refuses_a_too_small_target_and_leaves_it_untouched(
    tmp_path: Path, release: ReleaseOutputs, keys: Keys
) -> None:
    target = tmp_path / "small.img"
    target.write_bytes(b"\x5a" * (release.disk.stat().st_size - 4096))
    with pytest.raises(TargetRefused, match="too small"):
        flash(str(release.disk), str(target), keys.signer.public_key(), "kmsnode", log=quiet)
    assert set(target.read_bytes()) == {0x5A}


def test_refuses_an_image_signed_by_another_key(
    tmp_path: Path, release: ReleaseOutputs, keys: Keys
) -> None:
    target = tmp_path / "t.img"
    with pytest.raises(WrongKey):
        flash(str(release.disk), str(target), keys.other.public_key(), "kmsnode", log=quiet)
    assert not target.exists()


def test_refuses_a_truncated_image(tmp_path: Path, release: ReleaseOutputs, keys: Keys) -> None:
    img = copy_release(release, tmp_path / "rel")
    with open(img, "r+b") as f:
        f.truncate(img.stat().st_size - 512)
    with pytest.raises(Truncated):
        flash(str(img), str(tmp_path / "t.img"), keys.signer.public_key(), "kmsnode", log=quiet)
    assert not (tmp_path / "t.img").exists()


def test_refuses_an_image_with_one_changed_byte_in_the_root(
    tmp_path: Path, release: ReleaseOutputs, keys: Keys
) -> None:
    img = copy_release(release, tmp_path / "rel")
    root = gpt.read_layout(str(img))["root-a"]
    with open(img, "r+b") as f:
        f.seek(root.offset + 777)
        b = f.read(1)
        f.seek(root.offset + 777)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(HashMismatch, match=r"disk\.img"):
        flash(str(img), str(tmp_path / "t.img"), keys.signer.public_key(), "kmsnode", log=quiet)
    assert not (tmp_path / "t.img").exists()


def test_refuses_a_changed_manifest(tmp_path: Path, release: ReleaseOutputs, keys: Keys) -> None:
    img = copy_release(release, tmp_path / "rel")
    m = img.parent / "manifest.json"
    m.write_bytes(m.read_bytes().replace(b'"security_version":5', b'"security_version":7'))
    with pytest.raises(BadSignature):
        flash(str(img), str(tmp_path / "t.img"), keys.signer.public_key(), "kmsnode", log=quiet)


def test_refuses_writing_the_image_onto_itself(release: ReleaseOutputs, keys: Keys) -> None:
    with pytest.raises(TargetRefused, match="itself"):
        flash(str(release.disk), str(release.disk), keys.signer.public_key(), "kmsnode", log=quiet)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mkfs.ext4") is None,
    reason="needs root and mkfs.ext4 for a loop mount",
)
def test_refuses_a_mounted_target(tmp_path: Path, release: ReleaseOutputs, keys: Keys) -> None:
    target = tmp_path / "mounted.img"
    with open(target, "wb") as f:
        f.truncate(release.disk.stat().st_size + (4 << 20))
    subprocess.run(["mkfs.ext4", "-q", "-F", str(target)], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if (
        subprocess.run(
            ["mount", "-o", "loop", str(target), str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("loop mounts are not available here")
    try:
        before = target.read_bytes()[:65536]
        with pytest.raises(TargetRefused, match="mounted"):
            flash(str(release.disk), str(target), keys.signer.public_key(), "kmsnode", log=quiet)
        assert target.read_bytes()[:65536] == before
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_refuses_to_flash_an_older_image_over_a_newer_installed_one(
    tmp_path: Path, release: ReleaseOutputs, release_old: ReleaseOutputs, keys: Keys, flashed: Path
) -> None:
    from image.errors import Downgrade

    with pytest.raises(Downgrade):
        flash(str(release_old.disk), str(flashed), keys.signer.public_key(), "kmsnode", log=quiet)


def flash_cli(release: ReleaseOutputs, target: Path, pubkey: Path) -> int:
    """`kmsnode-image flash` of `release`'s disk onto `target`, trusting `pubkey`; its status."""
    return main(
        ["flash", "--image", str(release.disk), "--target", str(target), "--pubkey", str(pubkey)]
    )


def test_cli_reports_a_refusal_in_one_line_with_status_2(
    tmp_path: Path, release: ReleaseOutputs, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = flash_cli(release, tmp_path / "t.img", keys.other_public_pem)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("kmsnode-image: refused: manifest is signed by another key")
    assert err.count("\n") == 1


def test_cli_flashes_with_the_pinned_key(
    tmp_path: Path, release: ReleaseOutputs, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = flash_cli(release, tmp_path / "t.img", keys.public_pem)
    assert rc == 0
    assert "read-back verification OK" in capsys.readouterr().out


def test_a_write_that_corrupts_bytes_fails_the_read_back(
    tmp_path: Path, release: ReleaseOutputs, keys: Keys
) -> None:
    """Issue 10 item 6: a medium that returns one byte of slot a's root wrong after it was
    written: the read-back check fails (WriteFailed), the flash is not reported done."""
    from image.errors import WriteFailed

    target = tmp_path / "t.img"
    root_off = gpt.read_layout(str(release.disk))["root-a"].offset
    corrupted: list[int] = []

    def corrupt(name: str, done: int) -> None:
        # once slot a's root has been written, the medium returns one of its bytes wrong
        if not corrupted and target.stat().st_size > root_off + 4096:
            corrupted.append(done)
            with open(target, "r+b") as f:
                f.seek(root_off + 99)
                b = f.read(1)
                f.seek(-1, 1)
                f.write(bytes([b[0] ^ 0x80]))

    with pytest.raises(WriteFailed, match="read-back verification"):
        flash(
            str(release.disk),
            str(target),
            keys.signer.public_key(),
            "kmsnode",
            hook=corrupt,
            log=quiet,
        )
    assert corrupted


def test_an_interrupted_flash_leaves_no_partition_table_a_firmware_would_boot(
    tmp_path: Path, release: ReleaseOutputs, release_next: ReleaseOutputs, keys: Keys, flashed: Path
) -> None:
    class Cut(Exception):
        pass

    def cut(name: str, done: int) -> None:
        if done >= 2 << 20:
            raise Cut

    with pytest.raises(Cut):
        flash(
            str(release_next.disk),
            str(flashed),
            keys.signer.public_key(),
            "kmsnode",
            hook=cut,
            log=quiet,
        )
    with pytest.raises(TargetRefused):
        gpt.read_layout(str(flashed))
    size = flashed.stat().st_size
    with open(flashed, "rb") as f:
        f.seek(size - 512)
        assert f.read(8) != b"EFI PART"  # nor the backup header at the end


def seal_state(disk: Path) -> None:
    """What first boot does to the state partition: a LUKS2 header appears."""
    off = gpt.read_layout(str(disk))["state"].offset
    with open(disk, "r+b") as f:
        f.seek(off)
        f.write(b"LUKS\xba\xbe\x00\x02" + b"\x00" * 504)


def test_refuses_to_flash_over_an_installed_appliance_without_wipe_state(
    release: ReleaseOutputs, keys: Keys, flashed: Path
) -> None:
    seal_state(flashed)
    before = flashed.read_bytes()
    with pytest.raises(TargetRefused, match="--wipe-state"):
        flash(str(release.disk), str(flashed), keys.signer.public_key(), "kmsnode", log=quiet)
    assert flashed.read_bytes() == before
    flash(
        str(release.disk),
        str(flashed),
        keys.signer.public_key(),
        "kmsnode",
        log=quiet,
        wipe_state=True,
    )
    off = gpt.read_layout(str(flashed))["state"].offset
    with open(flashed, "rb") as f:
        f.seek(off)
        assert f.read(6) != b"LUKS\xba\xbe"


def test_sigterm_during_flash_prints_one_line_and_exits_130(
    tmp_path: Path,
    release: ReleaseOutputs,
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import signal

    import image.flash

    real = image.flash.copy_extent

    def copy_then_term(*args: object, **kw: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(image.flash, "copy_extent", copy_then_term)
    rc = flash_cli(release, tmp_path / "t.img", keys.public_pem)
    err = capsys.readouterr().err
    assert rc == 130
    assert err.startswith("kmsnode-image: interrupted (SIGTERM): the target has no valid")
    assert err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(TargetRefused):
        gpt.read_layout(str(tmp_path / "t.img"))
