"""Delivery of HI2 records to a LEMF over TLS 1.3 with client certificates (mutual TLS).

Rules:
- TLS 1.3 only; the LEMF's certificate must verify against the given CA and name the host we
  connect to (ssl's hostname check); we present the DF2's certificate.
- The records are written back to back on the connection (BER is self-delimiting: each record
  carries its own length), then the DF2 sends close_notify and waits for the LEMF's: a
  delivery returns only once the peer has read everything and closed TLS in turn.
- Every wait is bounded by `timeout`; a failure is an OSError/ssl.SSLError for the caller.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable
from pathlib import Path


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("an HI2 destination is HOST:PORT")
    return host.strip("[]"), int(port)


def deliver(
    address: str, records: Iterable[bytes], context: ssl.SSLContext, timeout: float = 30.0
) -> int:
    """Send `records` to the LEMF at `address` (HOST:PORT); returns the bytes sent."""
    host, port = split_address(address)
    data = b"".join(records)
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(data)
        tls.unwrap()  # our close_notify, then the LEMF's: it has read everything
    return len(data)
