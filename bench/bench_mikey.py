"""MIKEY codec benchmark (one core): TRANSFER_INIT decode + MAC verification and REQUEST_RESP
encode per second, each with a raw baseline measured in the same run; and the pre-authentication
cost of a crafted REQUEST_INIT (what an unauthenticated sender makes the KMS parse and MAC before
the MAC check refuses it), without and with the UE decode limits, against a normal one.

Run from the repo root: ``python -m bench.bench_mikey [--runs N]`` (the machine is shared: take
the best and the median of several runs).  Goal: >= 40,000 TRANSFER_INIT decode+verify per second.

``--compare TREE`` measures the pure sources and the codec in TREE (the unpacked compiled wheel of
``make test-compiled``; ``make bench-mikey-compiled``) back to back, alternating for ``--rounds``
rounds, each in its own process (both cannot live in one): per operation the median ops/s by the
wall clock and by the process's CPU time (less sensitive to a loaded machine), compiled / pure,
the load average before and after, and the file ``firmware.mikey.wire`` was loaded from.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import firmware.mikey.wire
from firmware.mikey.codec import Ticket
from firmware.mikey.errors import MikeyError
from firmware.mikey.kms import build_request_resp, verify_initial_psk
from firmware.mikey.message import UE_LIMITS, DecodeLimits, decode
from firmware.mikey.ticket import open_ticket
from firmware.mikey.transfer import verify_transfer_init
from tests.mikey.corpus import KMS_ID, PLAIN, PSK_A, crafted_request, run
from tests.mikey.kms_double import ntp_t


def rate_both(
    fn: Callable[[], object], seconds: float = 2.0, batch: int = 200
) -> tuple[float, float]:
    """(ops per wall-clock second, ops per CPU second of this process)."""
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start), n / max(time.process_time() - cpu, 1e-9)


def rate(fn: Callable[[], object], seconds: float = 2.0, batch: int = 200) -> float:
    return rate_both(fn, seconds, batch)[0]


def pre_auth(data: bytes, limits: DecodeLimits | None) -> Callable[[], None]:
    """What the KMS does with a REQUEST_INIT before it knows the sender: decode, then the MAC."""

    def step() -> None:
        with contextlib.suppress(MikeyError):  # the crafted ones are refused
            verify_initial_psk(decode(data, limits=limits), PSK_A, kms_identity=KMS_ID)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="repeat; print best and median")
    parser.add_argument("--json", action="store_true", help="one round of each op, as JSON")
    parser.add_argument("--compare", type=Path, metavar="TREE", help="pure vs the codec in TREE")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --compare")
    args = parser.parse_args()
    if args.compare is not None:
        compare(args.compare, args.rounds)
        return
    runs = args.runs
    results: list[tuple[float, ...]] = []
    r = run(PLAIN)
    ti = r.transfer_init
    init = decode(ti)
    opened = open_ticket(init.ticket_bytes(), r.kms._tpk_port)
    mpki = opened.mpki

    def decode_verify() -> None:
        verify_transfer_init(decode(ti), mpki)

    req = decode(r.request_init)
    ticket = decode(r.request_resp).require(Ticket)

    def encode_resp() -> bytes:
        return build_request_resp(
            req, PSK_A, t=ntp_t(2), ticket=ticket, mpki=mpki, mpkr=None,
            session_keys=opened.session_keys, kms_identity=b"kms",
        )  # fmt: skip

    def baseline() -> bytes:
        return hmac.digest(mpki, ti, "sha1")

    big = crafted_request(120_000)  # 240 KB of 2-byte payloads
    # the most the limits let in: max_payloads payloads, max_size bytes
    fill = crafted_request(UE_LIMITS.max_payloads - 8)
    capped = crafted_request(UE_LIMITS.max_payloads - 8, pad=UE_LIMITS.max_size - len(fill) - 4)
    assert len(capped) == UE_LIMITS.max_size and len(decode(capped, limits=UE_LIMITS).payloads) > 0
    normal = pre_auth(r.request_init, UE_LIMITS)
    if args.json:
        ops: dict[str, Callable[[], object]] = {
            "TRANSFER_INIT decode+verify": decode_verify,
            "REQUEST_INIT decode": lambda: decode(r.request_init, limits=UE_LIMITS),
            "REQUEST_RESP encode": encode_resp,
            "ticket open (peek+open)": lambda: open_ticket(init.ticket_bytes(), r.kms._tpk_port),
            "pre-auth REQUEST_INIT": normal,
            "worst under UE_LIMITS": pre_auth(capped, UE_LIMITS),
            "baseline hmac.digest": baseline,
        }
        out = {name: rate_both(fn) for name, fn in ops.items()}
        print(json.dumps({"wire": firmware.mikey.wire.__file__, "ops": out}))
        return
    for n in range(runs):
        base = rate(baseline)
        dv = rate(decode_verify)
        enc = rate(encode_resp)
        ok = rate(normal)
        before = rate(pre_auth(big, None), batch=1)
        after = rate(pre_auth(big, UE_LIMITS))
        worst = rate(pre_auth(capped, UE_LIMITS))
        results.append((dv, enc, base, ok, before, after, worst))
        if runs > 1:
            print(f"run {n + 1}/{runs}:")
        print(f"TRANSFER_INIT ({len(ti)} B) decode+verify: {dv:,.0f} ops/s  (goal 40,000)")
        print(f"REQUEST_RESP encode (AES-CM KEMAC + V):  {enc:,.0f} ops/s")
        print(f"baseline one hmac.digest over the same bytes: {base:,.0f} ops/s")
        print(f"ratios to baseline: decode+verify {dv / base:.3f}, encode {enc / base:.3f}")
        print(f"pre-auth REQUEST_INIT ({len(r.request_init)} B): {1e6 / ok:,.1f} us;"
              f" crafted {len(big) // 1000} KB unlimited: {1e6 / before:,.0f} us"
              f" ({ok / before:.0f}x); with UE_LIMITS: {1e6 / after:,.1f} us"
              f" ({ok / after:.2f}x); worst under the limits ({len(capped)} B,"
              f" {UE_LIMITS.max_payloads} payloads): {1e6 / worst:,.1f} us"
              f" ({ok / worst:.1f}x)")  # fmt: skip
    if runs > 1:
        names = ("decode+verify", "encode", "baseline hmac", "pre-auth normal",
                 "crafted, no cap", "crafted, capped", "worst under cap")  # fmt: skip
        for i, name in enumerate(names):
            values = [row[i] for row in results]
            print(f"{name:16s} best {max(values):>9,.1f}  median {statistics.median(values):>9,.1f}"
                  f" ops/s over {runs} runs")  # fmt: skip
        ratios = [row[0] / row[2] for row in results]
        print(f"decode+verify / baseline: best {max(ratios):.3f}, "
              f"median {statistics.median(ratios):.3f}")  # fmt: skip


def compare(tree: Path, rounds: int) -> None:
    """Pure sources vs the codec in ``tree``, alternating, each round a fresh process per side."""
    repo = Path(__file__).resolve().parents[1]
    sides = {"pure": str(repo), "compiled": f"{tree.resolve()}{os.pathsep}{repo}"}
    got: dict[str, list[dict[str, list[float]]]] = {side: [] for side in sides}
    files: dict[str, str] = {}
    load_before = os.getloadavg()
    for n in range(rounds):
        for side, path in sides.items():
            # -P: no script directory on sys.path, so PYTHONPATH alone decides which codec loads
            env = {**os.environ, "PYTHONPATH": path}
            cmd = [sys.executable, "-P", "-m", "bench.bench_mikey", "--json"]
            res = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                            text=True, cwd=repo).stdout)  # fmt: skip
            files[side] = res["wire"]
            got[side].append(res["ops"])
            print(f"round {n + 1}/{rounds} {side} done", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    for side, file in files.items():
        print(f"{side}: firmware.mikey.wire from {file}")
    print(f"load average before {load_before[0]:.2f} / after {load_after[0]:.2f} "
          f"(1 min; nproc {os.cpu_count()}); medians of {rounds} rounds")  # fmt: skip
    print(f"{'operation':30s} {'pure ops/s':>11s} {'compiled':>11s} {'x wall':>7s}"
          f" {'pure cpu':>11s} {'compiled':>11s} {'x cpu':>7s}")  # fmt: skip
    for name in got["pure"][0]:
        med = {side: [statistics.median(r[name][i] for r in got[side]) for i in (0, 1)]
               for side in sides}  # fmt: skip
        (pw, pc), (cw, cc) = med["pure"], med["compiled"]
        print(f"{name:30s} {pw:>11,.0f} {cw:>11,.0f} {cw / pw:>7.2f}"
              f" {pc:>11,.0f} {cc:>11,.0f} {cc / pc:>7.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
