"""Per-slot unified kernel images (ukify in the tools tree) and the signed systemd-boot.

Rules and invariants:
- One UKI per slot: kernel, initramfs and a command line naming that slot and its dm-verity root
  hash, salt and size. Under Secure Boot the stub ignores any command line passed by the loader,
  so the signed `.cmdline` is the only one the kernel ever sees.
- The signed command line ends with `kmsnode.end`; the initramfs refuses to boot if anything
  follows it (see END below).
- The command line enables kernel lockdown and turns systemd's debug shells and emergency
  targets off (a console must never become a root shell); dm-verity runs with
  restart-on-corruption (set by the initramfs from `kmsnode.verity=restart`).
- The `.osrel` of the UKI has no VERSION_ID/IMAGE_VERSION on purpose: systemd-boot then orders
  entries by file name (see esp.py), i.e. by install sequence, so a new install boots first even
  when it reinstalls an older version of the same security level.
- Signatures: sbsign with the release's db key over systemd-boot and each UKI.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from image.manifest import VerityInfo
from image.secureboot import SecureBootKey
from image.tools import WORK, run_in_tools

SLOTS = ("a", "b")
BOOT_LOADER = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"

# Fixed options of every slot's command line. `rd.`/`systemd.` shells and the emergency target
# are disabled; `panic=-1` reboots at once on a panic (boot counting then charges the try);
# `quiet` keeps kernel chatter off the (slow, serial) console, errors still show.
BASE_CMDLINE = (
    "console=tty0 console=ttyS0,115200 quiet panic=-1 ro lockdown=integrity systemd.gpt_auto=0 "
    "systemd.show_status=1 systemd.debug_shell=0 systemd.crash_shell=0 "
    "systemd.crash_reboot=1 kmsnode.verity=restart"
)

UkiMaker = Callable[[str, str, Path], None]  # (slot, command line, output)
# Last word of every signed command line. systemd-stub 257 appends SMBIOS type 11
# `io.systemd.stub.kernel-cmdline-extra` even under Secure Boot (measured into PCR 12 instead):
# the initramfs refuses to boot when anything follows this marker, and the sealed state and PIN
# are bound to PCR 12 too, so an extended command line can neither boot the root nor unseal.
END = "kmsnode.end"


def cmdline(verity: VerityInfo, slot: str) -> str:
    return (
        f"{BASE_CMDLINE} kmsnode.slot={slot} kmsnode.roothash={verity.root_hash} "
        f"kmsnode.salt={verity.salt} kmsnode.blocks={verity.data_blocks} {END}"
    )


def osrel(product: str) -> str:
    return f'ID={product}\nNAME="{product} appliance"\nPRETTY_NAME="{product} appliance"\n'


@dataclass(frozen=True)
class BootChain:
    """What `release.assemble` needs for the ESP: a signed boot loader and a UKI maker."""

    boot_loader: Path
    make_uki: UkiMaker


def signed_chain(
    tools: Path,
    work: Path,
    vmlinuz: Path,
    initrd: Path,
    kver: str,
    product: str,
    key: SecureBootKey,
    epoch: int,
) -> BootChain:
    """Stage kernel, initrd and key in `work` (bound at /work in the tools tree).

    `epoch` is SOURCE_DATE_EPOCH: ukify stamps the PE header with it (else with the clock).
    """
    key.check()
    work.mkdir(parents=True, exist_ok=True)
    for src, name in ((vmlinuz, "vmlinuz"), (initrd, "initrd.img")):
        shutil.copyfile(src, work / name)
    shutil.copyfile(key.key, work / "db.key")
    (work / "db.key").chmod(0o600)
    shutil.copyfile(key.cert, work / "db.crt")
    (work / "osrel").write_text(osrel(product))
    sign = ["--key", f"{WORK}/db.key", "--cert", f"{WORK}/db.crt"]
    run_in_tools(
        tools,
        work,
        ["sbsign", *sign, "--output", f"{WORK}/systemd-bootx64.efi", BOOT_LOADER],
        epoch,
    )

    def make(slot: str, line: str, out: Path) -> None:
        (work / f"cmdline-{slot}").write_text(line)
        run_in_tools(
            tools,
            work,
            [
                "ukify",
                "build",
                f"--linux={WORK}/vmlinuz",
                f"--initrd={WORK}/initrd.img",
                f"--cmdline=@{WORK}/cmdline-{slot}",
                f"--os-release=@{WORK}/osrel",
                f"--uname={kver}",
                "--signtool=sbsign",
                f"--secureboot-private-key={WORK}/db.key",
                f"--secureboot-certificate={WORK}/db.crt",
                f"--output={WORK}/uki-{slot}.efi",
            ],
            epoch,
        )
        shutil.move(work / f"uki-{slot}.efi", out)

    return BootChain(work / "systemd-bootx64.efi", make)


def unsigned_test_chain(work: Path) -> BootChain:
    """For unit tests without the tools tree: placeholder files that carry the command line."""
    work.mkdir(parents=True, exist_ok=True)
    loader = work / "BOOTX64.EFI"
    loader.write_bytes(b"MZ test boot loader\n")

    def make(slot: str, line: str, out: Path) -> None:
        out.write_bytes(b"MZ test UKI\n" + line.encode() + b"\n")

    return BootChain(loader, make)
