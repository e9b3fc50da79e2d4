"""An independent gRPC client for TLS policy tests: Python's ssl (whose protocol versions can be
capped, unlike gRPC Python's) plus the h2 HTTP/2 state machine, speaking the gRPC wire format
(length-prefixed messages, grpc-status in the trailers) by hand."""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events


@dataclass
class Answer:
    status: int | None  # grpc-status, None when the server closed without one
    message: str = ""
    replies: list[bytes] = field(default_factory=list)
    tls_version: str = ""


def call(
    port: int,
    path: str,
    request: bytes,
    *,
    ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    max_version: ssl.TLSVersion | None = None,
    timeout: float = 10.0,
) -> Answer:
    """One RPC `path` (e.g. "/kms.v1.XkService/GetKeys") with one serialized request message;
    reads until the stream ends (trailers) or the connection closes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.set_alpn_protocols(["h2"])
    if max_version is not None:
        ctx.maximum_version = max_version
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        answer = Answer(None, tls_version=tls.version() or "")
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", path),
                (":authority", f"localhost:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        conn.send_data(stream, b"\x00" + struct.pack(">I", len(request)) + request, end_stream=True)
        tls.sendall(conn.data_to_send())
        body = b""
        while True:
            try:
                data = tls.recv(65536)
            except (ssl.SSLError, ConnectionError):
                return answer
            if not data:
                return answer
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    for name, value in event.headers:
                        name = name.decode() if isinstance(name, bytes) else name
                        value = value.decode() if isinstance(value, bytes) else value
                        if name == "grpc-status":
                            answer.status = int(value)
                        elif name == "grpc-message":
                            answer.message = value
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    while len(body) >= 5:
                        size = struct.unpack(">I", body[1:5])[0]
                        answer.replies.append(body[5 : 5 + size])
                        body = body[5 + size :]
                    return answer
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return answer
            tls.sendall(conn.data_to_send())
