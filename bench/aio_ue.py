"""Prototype for issue 13 item 4 (measured, not the product): the node's TicketService on a
grpc.aio server with the handler run inline on the event loop, beside the node's own sync
listeners. It answers with the node's real core (same vault, store, replay cache, audit), but
without the listener policy (no TLS-version check, metrics or availability gate), so it shows an
upper bound of what moving the UE listener to grpc.aio would give.

    python -m bench.aio_ue --config FILE   (prints "UE listener on" the aio port, then the
    node's "LI listener on" line, like kmsnode serve)

Run by `bench.bench_kms --serve-module bench.aio_ue`. With KMS_AIO_NOWAIT=1 a RESOLVE_INIT's
resolution is queued for the store's writer but not waited for: the bound of an event-loop
listener whose durability waits were awaited instead of blocking the loop (the product never
answers before the row is durable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import grpc

from firmware import config as config_mod
from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.core.errors import KmsError
from firmware.node import Node


class _Ignored:
    def set(self) -> None:
        pass


class InlineTickets(kms_pb2_grpc.TicketServiceServicer):
    def __init__(self, node: Node) -> None:
        self.exchange = node.tickets.exchange

    async def Exchange(self, request: Any, context: Any) -> Any:
        try:
            return kms_pb2.MikeyMessage(data=self.exchange(bytes(request.data)))
        except KmsError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


async def serve(node: Node, cert: bytes, key: bytes, li: str, runtime: Path) -> None:
    options: list[tuple[str, int | str]] = [("grpc.so_reuseport", 0)]
    extra = os.environ.get("KMS_AIO_TARGET")
    if extra:
        options.append(("grpc.optimization_target", extra))
    server = grpc.aio.server(options=options)
    kms_pb2_grpc.add_TicketServiceServicer_to_server(InlineTickets(node), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    runtime.write_text(json.dumps({"ue": f"127.0.0.1:{port}", "li": li, "pid": os.getpid()}))
    print(f"UE listener on 127.0.0.1:{port}", flush=True)
    print(f"LI listener on {li}", flush=True)
    await server.wait_for_termination()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    cfg = config_mod.load(args.config)
    node = Node.start(cfg)
    if os.environ.get("KMS_AIO_NOWAIT"):  # upper bound only: resolutions written, not awaited
        store: Any = node.store

        def enqueue(resolution: Any) -> None:
            with store._pending_cv:
                store._pending.append((resolution, _Ignored(), []))
                store._pending_cv.notify()

        store.add_resolution = enqueue
        assert node.tickets.store is store
    li = f"{cfg.li_listener.host}:{node.li_port}"
    cert, key = cfg.ue_listener.cert.read_bytes(), cfg.ue_listener.key.read_bytes()
    try:
        asyncio.run(serve(node, cert, key, li, cfg.runtime_file))
    finally:
        node.stop(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
