"""The node's two gRPC listeners over TLS, with health, reflection and graceful shutdown.

Rules:
- UE listener: TicketService + health + reflection; TLS with server authentication only: the
  MIKEY V payload authenticates each UE message with the user's PSK, so client certificates are
  optional in the contract, and gRPC Python cannot ask for an optional one (it either requires a
  certificate or does not request one), so none is requested.
- LI listener: XkService + AdminService + health + reflection; client certificates required and
  TLS 1.3 only (enforced per RPC by `TlsPolicyInterceptor`, because gRPC Python cannot set a
  minimum protocol version on a server).
- TLS 1.2 is limited to ECDHE suites with AEAD ciphers (GRPC_SSL_CIPHER_SUITES, set before gRPC
  creates any credentials; TLS 1.3 suites are all AEAD).
- Health reports NOT_SERVING for every service while the HSM is unavailable.
- SO_REUSEPORT is off: a stale node must never silently share our port.
"""

from __future__ import annotations

import os
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

from firmware.api.proto.kms.v1 import kms_pb2  # noqa: E402

SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 256 * 1024),
    ("grpc.max_send_message_length", 1024 * 1024),
]


class TlsPolicyInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses every RPC on a connection that is not TLS 1.3 (LI listener)."""

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or (handler.unary_unary is None and handler.unary_stream is None):
            return handler

        def check(context: Any) -> None:
            versions = context.auth_context().get("ssl_tls_version", [])
            if versions != [b"TLSv1.3"]:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "the LI listener requires TLS 1.3")

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            def unary(request: Any, context: Any) -> Any:
                check(context)
                return inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        inner_us = handler.unary_stream

        def stream(request: Any, context: Any) -> Any:
            check(context)
            return inner_us(request, context)

        return grpc.unary_stream_rpc_method_handler(
            stream, handler.request_deserializer, handler.response_serializer
        )


@dataclass
class Listener:
    """One gRPC server on one address."""

    name: str
    server: Any
    port: int
    health: health.HealthServicer
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
    address: str,
    credentials: Any,
    register: Iterable[tuple[Callable[[Any, Any], None], Any, str]],
    workers: int,
    interceptors: list[Any] | None = None,
) -> Listener:
    """Build and bind (not start) a server; `register` yields (add_fn, servicer, service name)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name),
        interceptors=interceptors or [],
        options=SERVER_OPTIONS,
        maximum_concurrent_rpcs=4096,
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = []
    for add, servicer, service_name in register:
        add(servicer, server)
        services.append(service_name)
    reflection.enable_server_reflection(
        [*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    listener = Listener(name, server, port, health_servicer, services)
    listener.set_serving(False)
    return listener


def service_name(service: str) -> str:
    return str(kms_pb2.DESCRIPTOR.services_by_name[service].full_name)
