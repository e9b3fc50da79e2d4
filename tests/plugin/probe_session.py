"""Copied into an outside project (as test_probe.py) by test_sessions.py: reports this session's
node on the pipe named by $PROBE_REPORT, then holds it until the byte "g" arrives on $PROBE_GO
(bounded), and checks it still serves."""

from __future__ import annotations

import json
import os
import select

from kmsnode_pytest import KmsNode


def test_report_the_node_and_hold_it(kms_node: KmsNode) -> None:
    report = {
        "pid": kms_node.pid,
        "directory": str(kms_node.directory),
        "ue": kms_node.ue_address,
        "li": kms_node.li_address,
        "started_in": kms_node.started_in,
    }
    os.write(int(os.environ["PROBE_REPORT"]), (json.dumps(report) + "\n").encode())
    go = int(os.environ["PROBE_GO"])
    ready, _, _ = select.select([go], [], [], 300)
    assert ready and os.read(go, 1) == b"g", "the outer test never said go"
    assert kms_node.health("ue") and kms_node.health("li")
