"""Boot a flashed disk in QEMU the way firmware does (tests and demos): OVMF with Secure Boot
enforced, a TPM 2.0 (swtpm), the disk alone - no -kernel, no command line from the host.

Rules:
- A `Machine` is one appliance: its disk file, its firmware variable store (the release's db
  certificate enrolled, Secure Boot on) and its TPM state; all persist across boots, so sealed
  state and boot counting behave as on hardware.
- QEMU always runs under its own `timeout` (a refused image leaves OVMF sitting in its boot
  manager) and in its own process group, which `Guest.stop` kills with swtpm.
- The guest network is QEMU user networking with `restrict=on`: the guest reaches nothing but the
  forwarded listener ports on 127.0.0.1 (no NTP or DNS traffic leaves the machine). A boot given
  a `TimeServer` is the exception: QEMU's restricted mode drops every datagram from the guest but
  DHCP's, so NTP needs `restrict=off`; the guest is told (a `network.network.*` credential, as an
  operator would) to use 10.0.2.2, which QEMU maps to the host's loopback, where the test's
  SNTP server answers. The appliance names no other server, so nothing else is asked the time.
- System credentials reach the guest as SMBIOS type 11 strings (systemd imports them at boot).
- TCG runs single-threaded (`-accel tcg,thread=single`): with one host thread per vCPU (MTTCG),
  a vCPU once ran stale translated code while the other patched kernel text with int3
  breakpoints (text_poke_bp), and the guest kernel died 1.6 s into the boot ("Oops: int3" in
  enqueue_timer). One thread for both vCPUs cannot race that way.
- Every console line is also written with the host time since QEMU started (`*-timeline.log`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from image.config import RECIPE_DIR
from image.errors import BuildError
from image.tools import WORK, run_in_tools

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1bc")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
DB_OWNER = "6b6d736e-6f64-6500-8000-0000000000db"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise BuildError(f"missing: {', '.join(missing)} (apt-get install qemu-system-x86 swtpm)")


def enrol_vars(tools: Path, work: Path, db_cert: Path, out: Path) -> None:
    """An OVMF variable store with `db_cert` as PK, KEK and db, Secure Boot enforced."""
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(OVMF_VARS, work / "vars-in.fd")
    shutil.copyfile(db_cert, work / "db.crt")
    run_in_tools(
        tools,
        work,
        [
            "virt-fw-vars",
            f"--input={WORK}/vars-in.fd",
            f"--output={WORK}/vars-sb.fd",
            f"--enroll-cert={WORK}/db.crt",
            "--add-db",
            DB_OWNER,
            f"{WORK}/db.crt",
            "--no-microsoft",
            "--secure-boot",
        ],
    )
    shutil.move(work / "vars-sb.fd", out)


@dataclass
class Machine:
    disk: Path
    vars: Path
    workdir: Path
    tpm: bool = True

    @property
    def tpm_dir(self) -> Path:
        return self.workdir / "tpm"


NTP_EPOCH = 2208988800  # seconds from 1900 (NTP's era 0) to 1970
GUEST_HOST = "10.0.2.2"  # QEMU user networking: the host's loopback as the guest sees it


def _ntp_time(t: float) -> bytes:
    return struct.pack("!II", int(t) + NTP_EPOCH, int((t % 1) * 2**32) & 0xFFFFFFFF)


def sntp_reply(request: bytes, received: float, now: float) -> bytes | None:
    """RFC 4330 server reply (stratum 1, the host's clock) to a client request, else None."""
    if len(request) < 48 or request[0] & 7 != 3:
        return None
    version = (request[0] >> 3) & 7
    return (
        bytes([version << 3 | 4, 1, request[2], 0xEC])  # leap 0, server; stratum 1; 2^-20 s
        + struct.pack("!II", 0, 1 << 8)  # root delay 0, root dispersion 4 ms
        + b"LOCL"
        + _ntp_time(now)  # reference time
        + request[40:48]  # originate = the client's transmit time
        + _ntp_time(received)
        + _ntp_time(now)
    )


class TimeServer:
    """An SNTP server on the host's 127.0.0.1:123 (root), answering with the host's clock.

    SO_REUSEPORT: test runs side by side each start one; any of them answers correctly.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self.sock.bind(("127.0.0.1", 123))
        except OSError as exc:
            self.sock.close()
            raise BuildError(f"cannot serve NTP on 127.0.0.1:123: {exc.strerror}") from None
        self.sock.settimeout(0.5)
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sntp", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = sntp_reply(data, time.time(), time.time())
            if reply is not None:
                self.sock.sendto(reply, peer)
                self.answered += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def guest_credentials(self) -> dict[str, bytes]:
        """The appliance's own network file plus this server, as an operator would set it."""
        shipped = (RECIPE_DIR / "80-kmsnode.network").read_text()
        return {"network.network.80-kmsnode": (shipped + f"NTP={GUEST_HOST}\n").encode()}


class _Timeline(threading.Thread):
    """Copies console lines to `out` prefixed with the host seconds since `t0`."""

    def __init__(self, console: Path, out: Path, t0: float) -> None:
        super().__init__(name="console-timeline", daemon=True)
        self.console, self.out, self.t0 = console, out, t0
        self.done = threading.Event()

    def run(self) -> None:
        pos, partial = 0, b""
        with open(self.out, "w") as out:
            while True:
                finished = self.done.wait(0.25)
                try:
                    with open(self.console, "rb") as f:
                        f.seek(pos)
                        data = f.read()
                except FileNotFoundError:
                    data = b""
                pos += len(data)
                *lines, partial = (partial + data).split(b"\n")
                stamp = time.monotonic() - self.t0
                for line in lines:
                    text = ANSI.sub("", line.decode(errors="replace")).replace("\r", "").strip()
                    if text:
                        out.write(f"[{stamp:7.1f}] {text}\n")
                out.flush()
                if finished:
                    return


@dataclass
class Guest:
    proc: subprocess.Popen[bytes]
    console: Path
    ue_port: int
    li_port: int
    qmp: Path
    swtpm: subprocess.Popen[bytes] | None
    started: float = field(default_factory=time.monotonic)
    timeline: _Timeline | None = None

    def output(self) -> str:
        """Console text without ANSI codes and carriage returns."""
        try:
            return ANSI.sub("", self.console.read_text(errors="replace")).replace("\r", "")
        except FileNotFoundError:
            return ""

    def wait_for(self, *markers: str, timeout: float, since: int = 0) -> str | None:
        """The first marker seen on the console after offset `since`, or None on timeout/exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()[since:]
            for m in markers:
                if m in out:
                    return m
            if self.proc.poll() is not None:
                out = self.output()[since:]
                return next((m for m in markers if m in out), None)
            time.sleep(0.5)
        return None

    def exited(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def powerdown(self, timeout: float = 90) -> bool:
        """ACPI power button through QMP; True if the guest shut down within `timeout`."""
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.qmp))
            s.recv(4096)
            for cmd in ("qmp_capabilities", "system_powerdown"):
                s.sendall(json.dumps({"execute": cmd}).encode() + b"\n")
                s.recv(4096)
        return self.exited(timeout)

    def stop(self) -> None:
        """Kill `timeout` and QEMU together (QEMU runs in the new process group of `timeout`)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.timeline is not None:
            self.timeline.done.set()
            self.timeline.join()
        if self.swtpm is not None:
            with contextlib.suppress(ProcessLookupError):
                self.swtpm.kill()
            self.swtpm.wait()


def credential_args(credentials: dict[str, bytes]) -> list[str]:
    args = []
    for name, value in sorted(credentials.items()):
        b64 = base64.b64encode(value).decode()
        args += ["-smbios", f"type=11,value=io.systemd.credential.binary:{name}={b64}"]
    return args


def _start_swtpm(state: Path) -> tuple[subprocess.Popen[bytes], Path]:
    state.mkdir(parents=True, exist_ok=True)
    sock = state / "swtpm.sock"
    sock.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={state}",
            "--ctrl",
            f"type=unixio,path={sock}",
            "--terminate",
            "--log",
            "level=0",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BuildError("swtpm did not start")
        time.sleep(0.05)
    return proc, sock


def start(
    machine: Machine,
    timeout: int = 600,
    credentials: dict[str, bytes] | None = None,
    smbios: list[str] | None = None,
    reboot: bool = False,
    memory_mib: int = 1536,
    smp: int = 2,
    name: str = "boot",
    time_server: TimeServer | None = None,
    # No AVX: under TCG, glibc's AVX2 string functions are emulated slowly (Nehalem: SSE4.2).
    cpu: str = os.environ.get("KMSNODE_QEMU_CPU", "Nehalem"),
) -> Guest:
    """Boot `machine` from its disk; `reboot`: guest reboots stay inside this QEMU run;
    `time_server`: the guest synchronises its clock with it (see the module rules)."""
    require("qemu-system-x86_64", "timeout", *(["swtpm"] if machine.tpm else []))
    machine.workdir.mkdir(parents=True, exist_ok=True)
    console = machine.workdir / f"{name}-console.log"
    console.unlink(missing_ok=True)
    qmp = machine.workdir / "qmp.sock"
    qmp.unlink(missing_ok=True)
    ue, li = free_port(), free_port()
    swtpm, tpm_args = None, []
    if machine.tpm:
        swtpm, sock = _start_swtpm(machine.tpm_dir)
        tpm_args = [
            "-chardev", f"socket,id=chrtpm,path={sock}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", "tpm-tis,tpmdev=tpm0",
        ]  # fmt: skip
    creds = {**(credentials or {}), **(time_server.guest_credentials() if time_server else {})}
    cmd = [
        "timeout", "--signal=KILL", str(timeout),
        "qemu-system-x86_64", "-machine", "q35,smm=on", "-accel", "tcg,thread=single",
        "-cpu", cpu,
        "-m", str(memory_mib), "-smp", str(smp), "-nographic", "-nodefaults",
        "-global", "driver=cfi.pflash01,property=secure,value=on",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,unit=1,file={machine.vars}",
        "-serial", f"file:{console}",
        "-qmp", f"unix:{qmp},server=on,wait=off",
        "-drive", f"file={machine.disk},if=virtio,format=raw,cache=unsafe",
        "-netdev",
        f"user,id=n0,restrict={'off' if time_server else 'on'},"
        f"hostfwd=tcp:127.0.0.1:{ue}-:7443,hostfwd=tcp:127.0.0.1:{li}-:7444",
        "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-rng-pci",
        *tpm_args,
        *credential_args(creds),
        *(a for s in smbios or [] for a in ("-smbios", s)),
        *([] if reboot else ["-no-reboot"]),
    ]  # fmt: skip
    with open(machine.workdir / f"{name}-qemu.log", "wb") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=False
        )
    guest = Guest(proc, console, ue, li, qmp, swtpm)
    guest.timeline = _Timeline(console, machine.workdir / f"{name}-timeline.log", guest.started)
    guest.timeline.start()
    return guest
