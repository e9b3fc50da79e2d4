"""What the node's own code costs per message, without gRPC: the ticket core (REQUEST_INIT,
RESOLVE_INIT) and the key release (GetKeys) called in one process on a real SoftHSM token, the
SQLite store and the audit log of a `kmsnode dev-init` node, as the listeners call them.

    python -m bench.bench_core [--calls 300] [--rounds 3] [--compare TREE]

Per message: CPU microseconds by the process's CPU time (every thread: the store's and the
audit's writers included) over the calls of a round, the best of the rounds (least disturbed by
other load). The UE side of each call (building the messages) runs outside the measured windows.
`--compare TREE` runs this tree and TREE (another checkout, e.g. the commit before a change)
alternately, each round in its own process, and prints TREE / this per message: how much a change
saved, as a ratio measured in the same session. Figures go with the load average, as ever.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def one_round(calls: int) -> dict[str, float]:
    from bench.bench_kms import ALICE, BOB, KMS, POLICY, PSK_A, PSK_B, _rands, dev_node, t_now
    from firmware.config import load
    from firmware.core.ports import Caller, Role, Warrant
    from firmware.core.xk import GetKeysRequest, TargetRole
    from firmware.mikey.codec import GenericIdEntry
    from firmware.mikey.exchange import Initiator, Responder
    from firmware.node import Node

    dev = dev_node("kmsnode-bench-core-")
    node = Node.build(load(dev.config))
    try:
        now = time.time()
        node.store.put_warrant(
            Warrant("LI-B", BOB.decode(), now - 60, now + 3600, ("dns:df2.li.example.net",))
        )
        df2 = ("dns:df2.li.example.net",)
        caller = Caller(df2, ((Role.DF2, df2),), "bench", "TLSv1.3")
        spent = {"REQUEST_INIT": 0.0, "RESOLVE_INIT": 0.0, "GetKeys": 0.0}
        exchange, get_keys = node.tickets.exchange, node.release.get_keys
        for i in range(calls):
            alice, bob = Initiator(ALICE, PSK_A, KMS), Responder(BOB, PSK_B, KMS)
            csb, rand_i, rand_t, rand_r = _rands()
            request = alice.request_init(csb_id=csb, t=t_now(), rand_i=rand_i, policy=POLICY)
            t0 = time.process_time()
            answer = exchange(request)
            spent["REQUEST_INIT"] += time.process_time() - t0
            alice.process_request_resp(answer)
            session = [GenericIdEntry.srtp(1, csb)]
            ti = alice.transfer_init(
                csb_id=csb, t=t_now(), rand_i=rand_t, sessions=session, responder=BOB
            )
            bob.receive_transfer_init(ti)
            resolve = bob.resolve_init(csb_id=csb ^ 1, t=t_now(), rand_r=rand_r)
            t0 = time.process_time()
            answer = exchange(resolve)
            spent["RESOLVE_INIT"] += time.process_time() - t0
            bob.process_resolve_resp(answer)
            request_keys = GetKeysRequest(
                BOB.decode(), TargetRole.RESPONDER, ti, bob.transfer_resp(t=t_now()), "LI-B", str(i)
            )
            t0 = time.process_time()
            get_keys(caller, request_keys)
            spent["GetKeys"] += time.process_time() - t0
        return {k: v / calls * 1e6 for k, v in spent.items()}
    finally:
        node.stop(0)


def rounds_in(tree: Path, calls: int, rounds: int) -> list[dict[str, float]]:
    """`rounds` rounds, each in a fresh process running this file against `tree`'s sources (its
    folder first on sys.path), so a tree from before this benchmark existed can be measured."""
    out = []
    for _ in range(rounds):
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--one", "--calls", str(calls)],
            cwd=tree,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(tree)},
        )
        if proc.returncode != 0:
            raise SystemExit(f"round in {tree} failed:\n{proc.stderr[-2000:]}")
        out.append(json.loads(proc.stdout.splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare", type=Path, help="another checkout to measure against this one")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_round(args.calls)))
        return
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"load average before: {load}  ({args.calls} calls a round, best of {args.rounds})")
    trees = [HERE] + ([args.compare.resolve()] if args.compare else [])
    results: dict[Path, list[dict[str, float]]] = {t: [] for t in trees}
    for _ in range(args.rounds):  # alternate, so both trees see the same load
        for tree in trees:
            results[tree] += rounds_in(tree, args.calls, 1)
    for tree in trees:
        best = {k: min(r[k] for r in results[tree]) for k in results[tree][0]}
        med = {k: statistics.median(r[k] for r in results[tree]) for k in results[tree][0]}
        row = ", ".join(f"{k} {best[k]:.0f} us (median {med[k]:.0f})" for k in best)
        print(f"{tree}: CPU per message: {row}")
    if args.compare:
        this, other = ({k: min(r[k] for r in results[t]) for k in results[t][0]} for t in trees)
        print("other / this (best rounds): " + ", ".join(
            f"{k} {other[k] / this[k]:.2f}x" for k in this
        ))  # fmt: skip
    print("load average after: " + " ".join(Path("/proc/loadavg").read_text().split()[:3]))


if __name__ == "__main__":
    main()
