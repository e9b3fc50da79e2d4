"""`make bench`: every benchmark, one after the other (run nothing else meanwhile)."""

from __future__ import annotations

import subprocess
import sys

BENCHES = [
    "bench.bench_mikey",
    "bench.bench_vault",
    "bench.bench_core",
    "bench.bench_kms",
    "bench.bench_http",
]

if __name__ == "__main__":
    failed = 0
    for name in BENCHES:
        print(f"==== {name}", flush=True)
        failed |= subprocess.call([sys.executable, "-m", name])
    sys.exit(failed)
