"""MIKEY codec benchmark (one core): TRANSFER_INIT decode + MAC verification and REQUEST_RESP
encode per second, each with a raw baseline measured in the same run; and the pre-authentication
cost of a crafted REQUEST_INIT (what an unauthenticated sender makes the KMS parse and MAC before
the MAC check refuses it), without and with the UE decode limits, against a normal one.

Run from the repo root: ``python -m bench.bench_mikey [--runs N]`` (the machine is shared: take
the best and the median of several runs).  Goal: >= 40,000 TRANSFER_INIT decode+verify per second.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import statistics
import time
from collections.abc import Callable

from firmware.mikey.codec import Ticket
from firmware.mikey.errors import MikeyError
from firmware.mikey.kms import build_request_resp, verify_initial_psk
from firmware.mikey.message import UE_LIMITS, DecodeLimits, decode
from firmware.mikey.ticket import open_ticket
from firmware.mikey.transfer import verify_transfer_init
from tests.mikey.corpus import KMS_ID, PLAIN, PSK_A, crafted_request, run
from tests.mikey.kms_double import ntp_t


def rate(fn: Callable[[], object], seconds: float = 2.0, batch: int = 200) -> float:
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def pre_auth(data: bytes, limits: DecodeLimits | None) -> Callable[[], None]:
    """What the KMS does with a REQUEST_INIT before it knows the sender: decode, then the MAC."""

    def step() -> None:
        with contextlib.suppress(MikeyError):  # the crafted ones are refused
            verify_initial_psk(decode(data, limits=limits), PSK_A, kms_identity=KMS_ID)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="repeat; print best and median")
    runs = parser.parse_args().runs
    results: list[tuple[float, ...]] = []
    r = run(PLAIN)
    ti = r.transfer_init
    init = decode(ti)
    opened = open_ticket(init.ticket_bytes(), r.kms._tpk_mac)
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


if __name__ == "__main__":
    main()
