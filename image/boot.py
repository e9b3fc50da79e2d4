"""Boot a built disk in QEMU (TCG; KVM is unusable on these hosts) for tests and demos.

Rules:
- QEMU always runs under its own `timeout` (a hung guest must not hang the caller), and the caller
  also kills it when done; the disk is used through a throw-away qcow2 overlay, so the built image
  is never modified.
- The kernel command line carries the slot's verity parameters from the *signed* manifest, as the
  per-slot UKI will on hardware (where the UKI signature covers the command line).
- Guest port 7443/7444 (UE/LI listeners) are forwarded to 127.0.0.1 on free host ports.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from image.errors import BuildError
from image.manifest import Manifest

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cmdline(manifest: Manifest, slot: str = "a", extra: str = "") -> str:
    v = manifest.verity
    return (
        "console=ttyS0 panic=-1 ro systemd.gpt_auto=0 systemd.show_status=1 "
        f"kmsnode.slot={slot} kmsnode.roothash={v.root_hash} kmsnode.salt={v.salt} "
        f"kmsnode.blocks={v.data_blocks} {extra}"
    ).strip()


@dataclass
class Guest:
    proc: subprocess.Popen[bytes]
    console: Path
    ue_port: int
    li_port: int
    started: float = field(default_factory=time.monotonic)

    def output(self) -> str:
        """Console text without ANSI colour codes (systemd's status lines carry them)."""
        try:
            return ANSI.sub("", self.console.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def wait_for(self, *markers: str, timeout: float) -> str | None:
        """The first marker seen on the console, or None on timeout / QEMU exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            for m in markers:
                if m in out:
                    return m
            if self.proc.poll() is not None:
                return None
            time.sleep(0.5)
        return None

    def stop(self) -> None:
        """Kill `timeout` and QEMU together (QEMU runs in the new process group of `timeout`)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def start(
    disk: Path,
    kernel: Path,
    initrd: Path,
    manifest: Manifest,
    workdir: Path,
    slot: str = "a",
    timeout: int = 600,
    memory_mib: int = 1536,
    smp: int = 2,
    corrupt_at: int | None = None,
) -> Guest:
    """Boot `disk` through a fresh overlay; `corrupt_at` flips one byte of the overlay first."""
    for tool in ("qemu-system-x86_64", "qemu-img", "timeout"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} not installed (apt-get install qemu-system-x86 qemu-utils)")
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / "overlay.qcow2"
    overlay.unlink(missing_ok=True)
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            str(disk.resolve()),
            "-F",
            "raw",
            str(overlay),
        ],
        check=True,
    )
    if corrupt_at is not None:
        with open(disk, "rb") as f:
            f.seek(corrupt_at)
            orig = f.read(1)[0]
        write = f"write -P {orig ^ 0xFF} {corrupt_at} 1"
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", write, str(overlay)], check=True, capture_output=True
        )
    console = workdir / "console.log"
    console.unlink(missing_ok=True)
    ue, li = free_port(), free_port()
    cmd = [
        "timeout", "--signal=KILL", str(timeout),
        "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "max",
        "-m", str(memory_mib), "-smp", str(smp), "-nographic", "-no-reboot", "-nodefaults",
        "-serial", f"file:{console}",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline(manifest, slot),
        "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{ue}-:7443,hostfwd=tcp:127.0.0.1:{li}-:7444",
        "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return Guest(proc, console, ue, li)
