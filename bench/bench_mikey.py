"""MIKEY codec benchmark (one core): TRANSFER_INIT decode + MAC verification and
REQUEST_RESP encode per second, each with a raw baseline measured in the same run.

Run from the repo root: ``python -m bench.bench_mikey [--runs N]`` (the machine is shared: take
the best and the median of several runs).  Goal: >= 40,000 TRANSFER_INIT decode+verify per second.
"""

from __future__ import annotations

import argparse
import hmac
import statistics
import time
from collections.abc import Callable

from firmware.mikey.kms import build_request_resp
from firmware.mikey.message import decode
from firmware.mikey.ticket import open_ticket
from firmware.mikey.transfer import verify_transfer_init
from tests.mikey.corpus import PLAIN, PSK_A, run
from tests.mikey.kms_double import ntp_t


def rate(fn: Callable[[], object], seconds: float = 2.0) -> float:
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            fn()
        n += 200
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="repeat; print best and median")
    runs = parser.parse_args().runs
    results: list[tuple[float, float, float]] = []
    r = run(PLAIN)
    ti = r.transfer_init
    init = decode(ti)
    opened = open_ticket(init.ticket_bytes(), r.kms._tpk_mac)
    mpki = opened.mpki

    def decode_verify() -> None:
        verify_transfer_init(decode(ti), mpki)

    req = decode(r.request_init)
    from firmware.mikey.codec import Ticket

    ticket = decode(r.request_resp).require(Ticket)

    def encode_resp() -> bytes:
        return build_request_resp(
            req, PSK_A, t=ntp_t(2), ticket=ticket, mpki=mpki, mpkr=None,
            session_keys=opened.session_keys, kms_identity=b"kms",
        )  # fmt: skip

    def baseline() -> bytes:
        return hmac.digest(mpki, ti, "sha1")

    for n in range(runs):
        base = rate(baseline)
        dv = rate(decode_verify)
        enc = rate(encode_resp)
        results.append((dv, enc, base))
        if runs > 1:
            print(f"run {n + 1}/{runs}:")
        print(f"TRANSFER_INIT ({len(ti)} B) decode+verify: {dv:,.0f} ops/s  (goal 40,000)")
        print(f"REQUEST_RESP encode (AES-CM KEMAC + V):  {enc:,.0f} ops/s")
        print(f"baseline one hmac.digest over the same bytes: {base:,.0f} ops/s")
        print(f"ratios to baseline: decode+verify {dv / base:.3f}, encode {enc / base:.3f}")
    if runs > 1:
        for name, i in (("decode+verify", 0), ("encode", 1), ("baseline hmac", 2)):
            values = [r[i] for r in results]
            print(f"{name:14s} best {max(values):>9,.0f}  median {statistics.median(values):>9,.0f}"
                  f" ops/s over {runs} runs")  # fmt: skip
        ratios = [r[0] / r[2] for r in results]
        print(f"decode+verify / baseline: best {max(ratios):.3f}, "
              f"median {statistics.median(ratios):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
