"""A small HTTPS/1.1 server for the node's HTTP bindings (MIKEY over HTTPS, ETSI X1): h11 for
the protocol, the standard library's ssl for TLS, one thread per connection.

Why h11 and not a framework: it is python-hyper's sans-I/O HTTP/1.1 (pure Python, one wheel for
every CPython), strict about the grammar, and leaves the socket to us, so the TLS peer
certificate, the handshake timeout and every cap below are ours. Measured on this machine (2
cores, load ~6, one keep-alive TLS connection, 200-byte POST, 300-byte answer): server CPU per
request 343 us with h11 on threads, 540 us cheroot 11.1, 923 us hypercorn 0.18 (which exposes no
peer certificate); http.server gives the certificate but answers 22 requests/s (headers and body
in separate writes meet delayed ACK) and its own documentation says it is not for production.
cheroot also performs TLS handshakes in its single acceptor thread, so one slow client stalls
every new connection; here each connection's handshake runs in its own thread under a timeout.

Rules:
- One `Request` is one complete HTTP/1.1 message: the head is capped (`max_header_bytes`, 431
  beyond), the body must come with a Content-Length (411 for Transfer-Encoding: X1 forbids
  transfer codings, MIKEY messages are small) of at most `max_body_bytes` (413 beyond, decided
  before a byte of the body is read), and the whole request must arrive within
  `request_timeout` once its first byte came (slow senders cannot hold a thread forever).
- Only POST to the configured path is served: 405 (with Allow: POST) for other methods, 404
  for other paths, decided before the body is read. A protocol error is answered with h11's
  status hint (400 mostly) and the connection is closed.
- Keep-alive: a connection serves requests one after another (no pipelining is read ahead of an
  answer) until the client closes, `idle_timeout` passes between requests, or the node stops.
- SO_REUSEPORT only for the worker processes of one node ([node] processes > 1), as on the
  gRPC listeners: the kernel spreads connections over them.
- `max_connections` connections at once; one more is closed at accept. At most `workers`
  handlers run at once (more threads in the core thrash the GIL, as on the gRPC listeners).
- The handler gets the peer's verified certificate (DER) when the TLS layer asked for one and
  the client sent one, and the negotiated TLS version; it never sees an unverified certificate
  (the ssl context verifies against the configured CA).
- `stop(grace)`: no new connection is accepted, idle connections are closed at once, requests in
  progress get `grace` seconds to be answered, then every connection is closed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h11

from firmware.config import HttpLimits

log = logging.getLogger("kmsnode.https")

_READ = 65536


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]  # names lower-case, in the order received
    body: bytes = field(repr=False)
    peer_certificate: bytes | None  # DER of the verified client certificate
    tls_version: str

    def header(self, name: str) -> str | None:
        """The value of header `name` (several occurrences joined with ", ")."""
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else None


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = field(default=b"", repr=False)


Handler = Callable[[Request], Response]


def tls_context(
    cert: Path,
    key: Path,
    client_ca: Path | None,
    *,
    require_client_certificate: bool,
    minimum: ssl.TLSVersion,
    tls12_ciphers: str,
) -> ssl.SSLContext:
    """A server context: the node's certificate, TLS `minimum` or newer, TLS 1.2 limited to
    `tls12_ciphers` (TLS 1.3 suites are all AEAD), client certificates verified against
    `client_ca` (asked for when a CA is given, required when `require_client_certificate`)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = minimum
    ctx.set_ciphers(tls12_ciphers)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["http/1.1"])
    if client_ca is not None:
        ctx.load_verify_locations(str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    elif require_client_certificate:
        raise ValueError("a listener that requires client certificates needs a client CA")
    return ctx


class _Closed(Exception):
    """The peer went away, timed out, or the node is stopping: drop the connection."""


class _Connection:
    def __init__(self, server: HttpsServer, raw: socket.socket) -> None:
        self.server, self.raw = server, raw
        self.busy = False
        self.sock: ssl.SSLSocket | None = None

    def close(self) -> None:
        for s in (self.sock, self.raw):
            if s is None:
                continue
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def run(self) -> None:
        limits = self.server.limits
        try:
            self.raw.settimeout(limits.handshake_timeout)
            self.sock = self.server.context.wrap_socket(self.raw, server_side=True)
            peer = self.sock.getpeercert(binary_form=True)
            version = self.sock.version() or ""
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
            while not self.server.stopping.is_set():
                if not self._serve_one(conn, peer, version):
                    break
                conn.start_next_cycle()
        except (_Closed, OSError, ssl.SSLError):
            pass
        except Exception:  # a handler bug must not kill the listener; the log has it
            log.exception("%s: connection failed", self.server.name)
        finally:
            self.close()
            self.server._forget(self)

    # --- one request ----------------------------------------------------------------------

    def _receive(self, conn: h11.Connection, deadline: float | None) -> h11.Event:
        assert self.sock is not None
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                assert not isinstance(event, type)  # PAUSED: we answer before reading on
                return event
            timeout = self.server.limits.idle_timeout
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise _Closed()
            self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(_READ)
            except TimeoutError:
                raise _Closed() from None
            conn.receive_data(data)
            if deadline is None and data:
                deadline = time.monotonic() + self.server.limits.request_timeout

    def _send(self, conn: h11.Connection, response: Response, close: bool) -> None:
        assert self.sock is not None
        headers = [*response.headers, ("Content-Length", str(len(response.body)))]
        if close:
            headers.append(("Connection", "close"))
        self.sock.settimeout(self.server.limits.request_timeout)
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        data = (data or b"") + (conn.send(h11.Data(data=response.body)) or b"")
        data += conn.send(h11.EndOfMessage()) or b""
        self.sock.sendall(data)

    def _serve_one(self, conn: h11.Connection, peer: bytes | None, version: str) -> bool:
        """Serve one request; False when the connection must end."""
        limits, server = self.server.limits, self.server
        try:
            event = self._receive(conn, None)
            if isinstance(event, h11.ConnectionClosed):
                return False
            assert isinstance(event, h11.Request), event
            self.busy = True
            deadline = time.monotonic() + limits.request_timeout
            early = self._check_head(event)
            if early is not None:
                self._send(conn, early, close=True)
                return False
            if conn.they_are_waiting_for_100_continue:
                assert self.sock is not None
                self.sock.sendall(
                    conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                )
            body = bytearray()
            while True:
                part = self._receive(conn, deadline)
                if isinstance(part, h11.Data):  # h11 frames it: never past Content-Length
                    body += part.data
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    raise _Closed()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self._send(conn, Response(exc.error_status_hint), close=True)
            return False
        request = Request(
            event.method.decode("ascii", "replace"),
            event.target.decode("ascii", "replace"),
            tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers),
            bytes(body),
            peer,
            version,
        )
        with server.workers:
            response = server.handler(request)
        stopping = server.stopping.is_set()
        self._send(conn, response, close=stopping)
        self.busy = False
        return not stopping and conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def _check_head(self, event: h11.Request) -> Response | None:
        """What to answer before reading the body, or None to read it."""
        server = self.server
        # h11's cap counts only a head still incomplete in its buffer: one that arrived whole in
        # a TLS record is measured here (request line and header lines, CRLFs included).
        size = len(event.method) + len(event.target) + 12
        size += sum(len(n) + len(v) + 4 for n, v in event.headers)
        if size > server.limits.max_header_bytes:
            return Response(431)
        path = event.target.decode("ascii", "replace").split("?", 1)[0]
        if path != server.path:
            return Response(404)
        if event.method != b"POST":
            return Response(405, (("Allow", "POST"),))
        headers = {n: v for n, v in event.headers}
        if b"transfer-encoding" in headers:
            return Response(411)
        length = headers.get(b"content-length")
        if length is None:
            return Response(411)
        if int(length) > server.limits.max_body_bytes:  # h11 checked it is a number
            return Response(413)
        return None


class HttpsServer:
    """One HTTPS listener; `start` runs the accept loop in a thread."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        context: ssl.SSLContext,
        path: str,
        handler: Handler,
        limits: HttpLimits,
        workers: int,
        reuse_port: bool = False,
    ) -> None:
        self.name, self.context, self.path, self.handler = name, context, path, handler
        self.limits = limits
        self.workers = threading.BoundedSemaphore(workers)
        self.stopping = threading.Event()
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._listener = socket.create_server((host, port), backlog=128, reuse_port=reuse_port)
        self.port: int = self._listener.getsockname()[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._accept, name=f"{self.name}-accept")
        self._thread.daemon = True
        self._thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return  # the listening socket was shut down by stop()
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(self, raw)
            with self._lock:
                full = len(self._connections) >= self.limits.max_connections
                if not full and not self.stopping.is_set():
                    self._connections.add(connection)
            if full or self.stopping.is_set():
                connection.close()
                continue
            thread = threading.Thread(target=connection.run, name=f"{self.name}-conn")
            thread.daemon = True
            thread.start()

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)
            self._idle.notify_all()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def stop(self, grace: float) -> None:
        """Stop accepting, close idle connections, give busy ones `grace` seconds."""
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        deadline = time.monotonic() + grace
        with self._lock:
            for connection in list(self._connections):
                if not connection.busy:
                    connection.close()
            while self._connections and time.monotonic() < deadline:
                self._idle.wait(timeout=max(0.0, deadline - time.monotonic()))
            left = list(self._connections)
        for connection in left:
            connection.close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
