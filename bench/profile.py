"""`make profile`: py-spy profiles of the node under the benchmark's load (8 connections, 64 in
flight), one for ticket pairs and one for GetKeys.

    python -m bench.profile [--seconds 10] [--out profiles] [--gil] [--format flamegraph]

Writes OUT/pairs.<ext> and OUT/getkeys.<ext> (flamegraph SVG by default; `--format speedscope`
for https://www.speedscope.app, `raw` for collapsed stacks) and prints the top functions by own
samples from a collapsed-stack copy. `--gil` keeps only samples taken while the thread held the
GIL (what the issue's breakdown used); without it every non-idle sample counts. py-spy needs
ptrace rights over the node (root, or kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import collections
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
    args = parser.parse_args()
    node = dev_node("kmsnode-profile-")
    ca = (node.pki / "ca.pem").read_bytes()
    df2 = ((node.pki / "df2.key").read_bytes(), (node.pki / "df2.pem").read_bytes())
    with serving(node) as (proc, ue, li):
        add_warrants(node)
        exchange, close = exchange_through(ue, ca)
        requests = getkeys_requests(full_calls(exchange, 200))
        close()
        pids = (proc.pid,)
        profile("pairs", proc.pid, Target(f"localhost:{ue}", ca, pids), pair, args)
        li_target = Target(f"localhost:{li}", ca, pids, GETKEYS_PATH, df2, raw=True)
        profile("getkeys", proc.pid, li_target, getkeys_unit(requests), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
