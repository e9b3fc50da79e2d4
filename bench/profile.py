"""`make profile`: py-spy profiles of the node under the benchmark's load (8 connections, 64 in
flight), one for ticket pairs and one for GetKeys.

    python -m bench.profile [--seconds 10] [--out profiles] [--gil] [--format flamegraph]
    python -m bench.profile --switches [--seconds 4] [--out profiles]   (make profile-switches)

Writes OUT/pairs.<ext> and OUT/getkeys.<ext> (flamegraph SVG by default; `--format speedscope`
for https://www.speedscope.app, `raw` for collapsed stacks) and prints the top functions by own
samples from a collapsed-stack copy. `--gil` keeps only samples taken while the thread held the
GIL (what the issue's breakdown used); without it every non-idle sample counts. py-spy needs
ptrace rights over the node (root, or kernel.yama.ptrace_scope = 0).

`--switches` records, instead, where the node's threads block or wake one another: every third
context switch with its native call stack (`perf record -e context-switches`, DWARF unwinding;
Debian's linux-perf), summed by the C function that released the GIL (or took the lock, or made
the system call) just before it. Python profiles cannot see this: on these machines a switch
costs more than a short SQLite or PKCS#11 call, and two of them follow every GIL release that
another thread is waiting for. Writes OUT/<name>.switches.txt. Recording is capped at 4 s (the
stacks take ~20 MB a second).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from bench.bench_kms import (
    GETKEYS_PATH,
    add_warrants,
    dev_node,
    exchange_through,
    full_calls,
    getkeys_requests,
    getkeys_unit,
    pair,
    serving,
)
from bench.load import Target, Unit, run

EXT = {"flamegraph": "svg", "speedscope": "json", "raw": "txt"}


def pyspy() -> str:
    found = Path(sys.executable).with_name("py-spy")
    if not found.exists():
        raise SystemExit("py-spy is missing: make deps installs it (a dev dependency)")
    return str(found)


def record(pid: int, out: Path, fmt: str, seconds: float, gil: bool) -> subprocess.Popen[bytes]:
    cmd = [pyspy(), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250"]
    cmd += ["--format", fmt, "--output", str(out), "--nonblocking", "--subprocesses"]
    if gil:
        cmd.append("--gil")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def top(collapsed: Path, n: int = 25) -> list[str]:
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        own[frames[-1].split(" (")[0] + " (" + frames[-1].split(" (")[-1].split(":")[0] + ")"] += (
            int(count)
        )
        total += int(count)
    return [f"{c / total * 100:5.1f}%  {name}" for name, c in own.most_common(n)]


# frames that only carry the call to the interesting one
_GLUE = ("_PyEval", "_PyFunction", "PyObject_Vectorcall", "_PyObject_", "method_vectorcall",
         "cfunction", "_Py", "Py", "slot_", "vectorcall", "call_function", "partial")  # fmt: skip


def switch_causes(perf_script: str) -> collections.Counter[str]:
    """Context switches of `perf script` output by cause: after a GIL wait (take_gil) or a GIL
    hand-over (drop_gil), the C function that released it; otherwise the first user frames."""
    causes: collections.Counter[str] = collections.Counter()
    for block in perf_script.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        frames = []
        for line in lines[1:]:
            parts = line.strip().split(None, 1)
            if len(parts) < 2 or "kernel" in parts[1]:
                continue
            symbol = parts[1].split("+")[0].split(" (")[0]
            library = parts[1].rsplit("(", 1)[-1].rstrip(")").rsplit("/", 1)[-1].split(".")[0]
            frames.append(f"{symbol}@{library}")
        names = [f.split("@")[0] for f in frames]
        for marker, what in (
            ("take_gil", "waits for the GIL after"),
            ("drop_gil", "hands the GIL over in"),
        ):
            if marker in names:
                after = [f for f in frames[names.index(marker) + 1 :] if not f.startswith(_GLUE)]
                causes[f"{what} {' < '.join(after[:2])}"] += 1
                break
        else:
            thread = lines[0].split()[0]
            causes[f"{thread}: {' < '.join(f for f in frames[:3])}"] += 1
    return causes


def record_switches(
    name: str, pid: int, target: Target, unit: Unit, args: argparse.Namespace
) -> None:
    perf = shutil.which("perf")
    if perf is None:
        raise SystemExit("perf is missing: apt-get install linux-perf (make profile-switches)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{name}.perf.data"
    seconds = min(args.seconds, 4.0)
    cmd = [perf, "record", "-q", "-e", "context-switches", "-c", "3", "--call-graph", "dwarf,8192"]
    spy = subprocess.Popen(
        [*cmd, "-p", str(pid), "-o", str(data), "--", "sleep", str(seconds)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    result = run(target, unit, seconds=seconds + 1, warmup=0.5)
    _, err = spy.communicate()
    if spy.returncode != 0:
        raise SystemExit(f"perf record failed: {err.decode(errors='replace')[-500:]}")
    script = subprocess.run(
        [perf, "script", "-i", str(data)], capture_output=True, text=True, check=True
    ).stdout
    data.unlink()
    causes = switch_causes(script)
    total = sum(causes.values()) or 1
    report = [
        f"{name}: {result.switches_per_rpc:.1f} context switches and {result.server_us:.0f} us"
        f" of server CPU per RPC; by cause (of {total} sampled):",
        *(f"{n / total * 100:5.1f}%  {cause}" for cause, n in causes.most_common(30)),
    ]
    (out / f"{name}.switches.txt").write_text("\n".join(report) + "\n")
    print("\n".join(report))


def profile(name: str, pid: int, target: Target, unit: Unit, args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [(out / f"{name}.{EXT[args.format]}", args.format), (out / f"{name}.collapsed", "raw")]
    spies = [record(pid, path, fmt, args.seconds, args.gil) for path, fmt in files]
    load = threading.Thread(
        target=run, args=(target, unit), kwargs={"seconds": args.seconds + 2, "warmup": 0.5}
    )
    load.start()
    for spy in spies:
        _, err = spy.communicate()
        if spy.returncode != 0:
            raise SystemExit(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
    load.join()
    print(f"== {name}: {files[0][0]}")
    print("\n".join(top(files[1][0])))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default="profiles")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--format", default="flamegraph", choices=sorted(EXT))
    parser.add_argument("--switches", action="store_true", help="context switches by cause")
    args = parser.parse_args()
    measure = record_switches if args.switches else profile
    node = dev_node("kmsnode-profile-")
    ca = (node.pki / "ca.pem").read_bytes()
    df2 = ((node.pki / "df2.key").read_bytes(), (node.pki / "df2.pem").read_bytes())
    with serving(node) as (proc, ue, li):
        add_warrants(node)
        exchange, close = exchange_through(ue, ca)
        requests = getkeys_requests(full_calls(exchange, 200))
        close()
        pids = (proc.pid,)
        measure("pairs", proc.pid, Target(f"localhost:{ue}", ca, pids), pair, args)
        li_target = Target(f"localhost:{li}", ca, pids, GETKEYS_PATH, df2, raw=True)
        measure("getkeys", proc.pid, li_target, getkeys_unit(requests), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
