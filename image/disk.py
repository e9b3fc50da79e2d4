"""GPT disk image assembly with systemd-repart (offline, reproducible with a fixed --seed).

Rules:
- Partition types follow the Discoverable Partitions Spec (see `gpt.LAYOUT`); labels name slots.
- Slot B is allocated at slot A's size so an update of the same size class always fits; each root
  slot gets `headroom` percent on top of the current root image.
- The state partition is left unformatted: first boot formats it (systemd-makefs via fstab
  `x-systemd.makefs`), so the shipped image holds no per-device data and stays bit-reproducible.
- The ESP is a FAT image made with `mkfs.vfat --invariant` and a fixed volume id.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from image.errors import BuildError

MIB = 1 << 20


def round_up(n: int, unit: int = MIB) -> int:
    return (n + unit - 1) // unit * unit


@dataclass(frozen=True)
class DiskLayout:
    root_slot: int
    verity_slot: int
    esp: int = 64 * MIB
    bootstate: int = 1 * MIB
    state: int = 256 * MIB

    @classmethod
    def for_root(
        cls,
        root_size: int,
        verity_size: int,
        headroom: int = 50,
        state: int = 256 * MIB,
        esp: int = 64 * MIB,
    ) -> DiskLayout:
        return cls(
            root_slot=round_up(root_size * (100 + headroom) // 100),
            verity_slot=round_up(verity_size * (100 + headroom) // 100 + 4096),
            esp=esp,
            state=state,
        )


def make_esp(path: Path, size: int) -> None:
    path.unlink(missing_ok=True)
    subprocess.run(
        [
            "mkfs.vfat",
            "--invariant",
            "-i",
            "4b4d5331",
            "-n",
            "KMSNODE-ESP",
            "-C",
            str(path),
            str(size // 1024),
        ],
        check=True,
        capture_output=True,
    )


def make_disk(
    out: Path,
    layout: DiskLayout,
    root_img: Path,
    root_verity: Path,
    bootstate_img: bytes,
    seed: str,
    esp_img: Path | None = None,
) -> None:
    if shutil.which("systemd-repart") is None:
        raise BuildError(
            "systemd-repart not found (Debian: in systemd on bookworm, systemd-repart on trixie)"
        )
    with tempfile.TemporaryDirectory(prefix="kmsnode-repart-") as tmp:
        d = Path(tmp)
        bs = d / "bootstate.bin"
        bs.write_bytes(bootstate_img.ljust(layout.bootstate, b"\x00"))
        esp = esp_img
        if esp is None:
            esp = d / "esp.img"
            make_esp(esp, layout.esp)
        defs = d / "defs"
        defs.mkdir()

        def part(name: str, typ: str, size: int, copy: Path | None) -> None:
            text = (
                f"[Partition]\nType={typ}\nLabel={name}\nSizeMinBytes={size}\nSizeMaxBytes={size}\n"
            )
            if copy is not None:
                text += f"CopyBlocks={copy}\n"
            (defs / f"{len(list(defs.iterdir())):02d}-{name}.conf").write_text(text)

        part("esp", "esp", layout.esp, esp)
        part("root-a", "root-x86-64", layout.root_slot, root_img)
        part("verity-a", "root-x86-64-verity", layout.verity_slot, root_verity)
        part("root-b", "root-x86-64", layout.root_slot, None)
        part("verity-b", "root-x86-64-verity", layout.verity_slot, None)
        part("bootstate", "linux-generic", layout.bootstate, bs)
        part("state", "linux-generic", layout.state, None)
        out.unlink(missing_ok=True)
        proc = subprocess.run(
            [
                "systemd-repart",
                "--empty=create",
                "--size=auto",
                "--dry-run=no",
                "--no-pager",
                f"--definitions={defs}",
                f"--seed={seed}",
                str(out),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise BuildError(f"systemd-repart failed: {proc.stderr.strip()[-500:]}")
