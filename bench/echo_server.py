"""Baseline: the minimal gRPC TLS echo server of the fastest kind measured here (sync thread
pool), serving the same TicketService method and answering each request with its own bytes.

    python -m bench.echo_server CERT KEY [CLIENT_CA]   (prints "PORT n" once listening on
    127.0.0.1; with CLIENT_CA it requires a client certificate: the mutual-TLS baseline of the LI
    listener)
"""

from __future__ import annotations

import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc


class Echo(kms_pb2_grpc.TicketServiceServicer):
    def Exchange(self, request: Any, context: Any) -> Any:
        return kms_pb2.MikeyMessage(data=request.data)


def main() -> None:
    cert, key = Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]).read_bytes()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16), options=[("grpc.so_reuseport", 0)]
    )
    kms_pb2_grpc.add_TicketServiceServicer_to_server(Echo(), server)
    client_ca = Path(sys.argv[3]).read_bytes() if len(sys.argv) > 3 else None
    creds = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    print(f"PORT {port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
