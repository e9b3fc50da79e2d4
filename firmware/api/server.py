"""The node's gRPC listeners over TLS: health, reflection, limits, graceful shutdown.

Rules:
- UE listener: TicketService + health; TLS with server authentication only: the MIKEY V payload
  authenticates each UE message with the user's PSK, so client certificates are optional in the
  contract, and gRPC Python cannot ask for an optional one (it either requires a certificate or
  does not request one), so none is requested. No reflection here.
- LI listener: XkService + AdminService + health + reflection; client certificates required and
  TLS 1.3 only for every method kind (unary and streaming alike), enforced per RPC by the
  listener policy because gRPC Python cannot set a minimum protocol version on a server.
  Reflection answers only a caller that holds a role (`reflection_guard`).
- TLS 1.2 is limited to ECDHE suites with AEAD ciphers (GRPC_SSL_CIPHER_SUITES, set before gRPC
  creates any credentials; TLS 1.3 suites are all AEAD).
- No client can starve a listener: streaming RPCs (health Watch, reflection, WatchAlarms) run in
  their own thread pool, never in the unary handler pool; open streams are capped per listener
  and per client certificate (all anonymous clients count as one), refused RESOURCE_EXHAUSTED
  beyond; connections are capped (`grpc.max_allowed_incoming_connections`), pinged
  (keepalive), closed when idle and aged out (max_connection_idle / max_connection_age).
- A request that does not decode (e.g. invalid UTF-8 in a string field) reaches the servicer as
  an `Undecodable` marker instead of failing inside gRPC (which answers INTERNAL and logs a
  traceback), so the servicer can refuse it INVALID_ARGUMENT through the refusal path.
- Every RPC is counted by method and final status code; unary RPCs' latency is observed.
- Health reports NOT_SERVING for every service while the HSM (or the state) is unavailable; the
  unary health Check stays anonymous.
- SO_REUSEPORT is off, except for the worker processes of one node ([node] processes > 1), which
  share the listeners on purpose: a stale node must never silently share our port.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

AEAD_TLS12_SUITES = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
os.environ["GRPC_SSL_CIPHER_SUITES"] = AEAD_TLS12_SUITES

import grpc  # noqa: E402  (the cipher suites must be set before gRPC reads them)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha import reflection  # noqa: E402

from firmware.api.metrics import Labelled, Metrics  # noqa: E402
from firmware.api.proto.kms.v1 import kms_pb2  # noqa: E402
from firmware.api.roles import certificate_facts  # noqa: E402
from firmware.config import ListenerConfig  # noqa: E402

MAX_RECEIVE = 256 * 1024
REFLECTION_PREFIX = "/grpc.reflection."
_SPARE_STREAM_THREADS = 4  # so a stream over the cap always finds a thread to be refused in


def server_options(limits: ListenerConfig, reuse_port: bool = False) -> list[tuple[str, int]]:
    ms = 1000
    return [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", MAX_RECEIVE),
        ("grpc.max_send_message_length", 1024 * 1024),
        ("grpc.max_allowed_incoming_connections", limits.max_connections),
        ("grpc.max_concurrent_streams", 100),
        ("grpc.keepalive_time_ms", int(limits.keepalive_time * ms)),
        ("grpc.keepalive_timeout_ms", int(limits.keepalive_timeout * ms)),
        ("grpc.max_connection_idle_ms", int(limits.max_connection_idle * ms)),
        ("grpc.max_connection_age_ms", int(limits.max_connection_age * ms)),
        ("grpc.max_connection_age_grace_ms", int(limits.max_connection_age_grace * ms)),
        ("grpc.http2.max_ping_strikes", 2),
    ]


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes did not decode as the method's message."""

    error: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, invalid UTF-8, ...: the servicer refuses it
            return Undecodable(type(exc).__name__)

    return decode


class Availability:
    """Why the node refuses to serve right now (None: it serves). Set by the node (an
    unsynchronised clock); every RPC but health is then answered UNAVAILABLE with the reason."""

    def __init__(self) -> None:
        self.reason: str | None = None


HEALTH_PREFIX = "/grpc.health."


class StreamSlots:
    """Caps on open streams: per listener and per client certificate."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self._open: dict[str, int] = {}
        self._count = 0
        self._lock = threading.Lock()

    def acquire(self, client: str) -> bool:
        with self._lock:
            if self._count >= self.total or self._open.get(client, 0) >= self.per_client:
                return False
            self._count += 1
            self._open[client] = self._open.get(client, 0) + 1
            return True

    def release(self, client: str) -> None:
        with self._lock:
            self._count -= 1
            left = self._open[client] - 1
            if left:
                self._open[client] = left
            else:
                del self._open[client]

    @property
    def open(self) -> int:
        with self._lock:
            return self._count


def _client_key(context: Any) -> str:
    pems = context.auth_context().get("x509_pem_cert", ())
    facts = certificate_facts(bytes(pems[0])) if pems else None
    return facts.fingerprint if facts is not None else "anonymous"


class ListenerPolicy(grpc.ServerInterceptor):  # type: ignore[misc]
    """The one wrapper every RPC of a listener passes: TLS version, decoding, stream pool and
    caps, reflection guard, metrics (see the module rules). One instance per server: it keeps
    the handlers that server's continuation gave it."""

    def __init__(
        self,
        metrics: Metrics,
        slots: StreamSlots,
        stream_pool: futures.ThreadPoolExecutor,
        require_tls13: bool,
        reflection_guard: Callable[[Any], None] | None = None,
        availability: Availability | None = None,
    ) -> None:
        self.metrics, self.slots, self.stream_pool = metrics, slots, stream_pool
        self.require_tls13 = require_tls13
        self.reflection_guard = reflection_guard
        self.availability = availability or Availability()
        # method path -> its wrapped handler: gRPC asks the interceptor on every RPC, and the
        # registered handlers never change, so each method is wrapped once (its metric children
        # resolved then), not per call. Unknown paths are not kept (no growth on junk names).
        self._wrapped: dict[str, Any] = {}

    def _check_tls(self, context: Any) -> None:
        if self.require_tls13:
            versions = context.auth_context().get("ssl_tls_version", [])
            if versions != [b"TLSv1.3"]:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "the LI listener requires TLS 1.3")

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        full = details.method
        found = self._wrapped.get(full)
        if found is not None:
            return found
        handler = continuation(details)
        if handler is None:
            return None
        found = self._wrapped[full] = self._wrap(handler, full)
        return found

    def _wrap(self, handler: Any, full: str) -> Any:
        method = full.rsplit("/", 1)[-1]
        guard = self.reflection_guard if full.startswith(REFLECTION_PREFIX) else None
        kinds = {
            "unary_unary": (grpc.unary_unary_rpc_method_handler, False),
            "stream_unary": (grpc.stream_unary_rpc_method_handler, False),
            "unary_stream": (grpc.unary_stream_rpc_method_handler, True),
            "stream_stream": (grpc.stream_stream_rpc_method_handler, True),
        }
        serving_only = not full.startswith(HEALTH_PREFIX)
        for kind, (make, streaming) in kinds.items():
            inner = getattr(handler, kind)
            if inner is None:
                continue
            wrapped = (
                self._stream(inner, method, guard)
                if streaming
                else self._unary(inner, method, serving_only)
            )
            return make(
                wrapped, _tolerant(handler.request_deserializer), handler.response_serializer
            )
        return handler

    def _unary(
        self, inner: Callable[..., Any], method: str, serving_only: bool
    ) -> Callable[..., Any]:
        availability = self.availability
        requests = Labelled(self.metrics.requests)
        latency = self.metrics.latency.labels(method)

        def unary(request: Any, context: Any) -> Any:
            start = time.perf_counter()
            code = "OK"
            try:
                self._check_tls(context)
                reason = availability.reason
                if serving_only and reason is not None:
                    context.abort(grpc.StatusCode.UNAVAILABLE, reason)
                return inner(request, context)
            except BaseException:
                found = context.code() if hasattr(context, "code") else None
                code = found.name if found is not None else "UNKNOWN"
                raise
            finally:
                requests(method, code).inc()
                latency.observe(time.perf_counter() - start)

        return unary

    def _stream(
        self, inner: Callable[..., Any], method: str, guard: Callable[[Any], None] | None
    ) -> Callable[..., Any]:
        """A streaming behaviour run in the stream pool, holding a slot until the RPC ends; the
        inner behaviour's non-blocking mode (health Watch) is kept."""
        slots, metrics = self.slots, self.metrics
        non_blocking = bool(getattr(inner, "experimental_non_blocking", False))

        def stream(request: Any, context: Any, send_response_callback: Any = None) -> Any:
            self._check_tls(context)
            if guard is not None:
                guard(context)
            client = _client_key(context)
            if not slots.acquire(client):
                metrics.requests.labels(method, "RESOURCE_EXHAUSTED").inc()
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many open streams")
            released = threading.Event()

            def release() -> None:
                if not released.is_set():
                    released.set()
                    slots.release(client)

            if not context.add_callback(release):
                release()
            metrics.requests.labels(method, "OPENED").inc()
            if non_blocking:
                return inner(request, context, send_response_callback)
            return inner(request, context)

        stream.experimental_non_blocking = non_blocking  # type: ignore[attr-defined]
        stream.experimental_thread_pool = self.stream_pool  # type: ignore[attr-defined]
        return stream


@dataclass
class Listener:
    """One gRPC server on one address."""

    name: str
    server: Any
    port: int
    health: health.HealthServicer
    slots: StreamSlots
    services: list[str] = field(default_factory=list)

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ["", *self.services]:
            self.health.set(service, status)


def server_credentials(
    cert: bytes, key: bytes, client_ca: bytes | None, require_client_auth: bool
) -> Any:
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=require_client_auth
    )


def make_listener(
    name: str,
    limits: ListenerConfig,
    credentials: Any,
    register: Iterable[tuple[Callable[[Any, Any], None], Any, str]],
    workers: int,
    metrics: Metrics,
    *,
    require_tls13: bool = False,
    reflection_guard: Callable[[Any], None] | None = None,
    reuse_port: bool = False,
    availability: Availability | None = None,
) -> Listener:
    """Build and bind (not start) a server; `register` yields (add_fn, servicer, service name).
    Reflection is served only with a `reflection_guard`. `reuse_port` lets the worker processes
    of one node share the address (never otherwise: a stale node must not share our port)."""
    slots = StreamSlots(limits.max_streams, limits.max_streams_per_client)
    stream_pool = futures.ThreadPoolExecutor(
        max_workers=limits.max_streams + _SPARE_STREAM_THREADS,
        thread_name_prefix=f"{name}-stream",
    )
    policy = ListenerPolicy(
        metrics, slots, stream_pool, require_tls13, reflection_guard, availability
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name),
        interceptors=[policy],
        options=server_options(limits, reuse_port),
        maximum_concurrent_rpcs=4096,
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = []
    for add, servicer, service_name in register:
        add(servicer, server)
        services.append(service_name)
    if reflection_guard is not None:
        reflection.enable_server_reflection(
            [*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
    port = server.add_secure_port(limits.address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {limits.address}")
    listener = Listener(name, server, port, health_servicer, slots, services)
    listener.set_serving(False)
    return listener


def service_name(service: str) -> str:
    return str(kms_pb2.DESCRIPTOR.services_by_name[service].full_name)
