"""TLS policy of the listeners, checked with an independent TLS client (Python's ssl module)."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import grpc
import pytest

from tests.api.conftest import RunningNode

pytestmark = pytest.mark.softhsm


def _handshake(running: RunningNode, port: int, **opts: Any) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(running.pki / "ca.pem")
    ctx.set_alpn_protocols(["h2"])
    if "max_version" in opts:
        ctx.maximum_version = opts["max_version"]
    if "ciphers" in opts:
        ctx.set_ciphers(opts["ciphers"])
    if "client" in opts:
        ctx.load_cert_chain(
            running.pki / f"{opts['client']}.pem", running.pki / f"{opts['client']}.key"
        )
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        if opts.get("read"):
            # The server speaks first on HTTP/2 (its SETTINGS frame) once it accepts the peer.
            try:
                return "answered" if tls.recv(9) else "closed"
            except (ssl.SSLError, ConnectionError):
                return "refused"
        return f"{tls.version()} {tls.cipher()[0]}"


def test_ue_listener_speaks_tls13_and_tls12_with_aead_only(running: RunningNode) -> None:
    assert _handshake(running, running.node.ue_port).startswith("TLSv1.3")
    assert "GCM" in _handshake(running, running.node.ue_port, max_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        _handshake(
            running,
            running.node.ue_port,
            max_version=ssl.TLSVersion.TLSv1_2,
            ciphers="ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:AES128-SHA",
        )


def test_li_listener_requires_a_client_certificate(running: RunningNode) -> None:
    assert _handshake(running, running.node.li_port, client="df2").startswith("TLSv1.3")
    assert _handshake(running, running.node.li_port, client="df2", read=True) == "answered"
    # TLS 1.3 reports a missing client certificate after the client's handshake: read to see it.
    assert _handshake(running, running.node.li_port, read=True) in ("refused", "closed")


class _Context:
    def __init__(self, version: bytes) -> None:
        self.version = version
        self.aborted: tuple[Any, str] | None = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"ssl_tls_version": [self.version]}

    def abort(self, code: Any, message: str) -> None:
        self.aborted = (code, message)
        raise RuntimeError("aborted")

    def add_callback(self, fn: Any) -> bool:
        return True


class _Details:
    method = "/kms.v1.AdminService/Any"


@pytest.mark.parametrize(
    "make",
    [
        grpc.unary_unary_rpc_method_handler,
        grpc.unary_stream_rpc_method_handler,
        grpc.stream_unary_rpc_method_handler,
        grpc.stream_stream_rpc_method_handler,
    ],
)
def test_the_li_policy_refuses_every_method_kind_on_tls12(make: Any) -> None:
    from concurrent import futures

    from firmware.api.metrics import Metrics
    from firmware.api.server import ListenerPolicy, StreamSlots

    handler = make(lambda req, ctx: "answered")
    policy = ListenerPolicy(Metrics(), StreamSlots(4, 4), futures.ThreadPoolExecutor(1), True)
    wrapped = policy.intercept_service(lambda details: handler, _Details())
    behaviour = next(
        getattr(wrapped, kind)
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        if getattr(wrapped, kind) is not None
    )
    assert behaviour(b"", _Context(b"TLSv1.3")) == "answered"
    old = _Context(b"TLSv1.2")
    with pytest.raises(RuntimeError):
        behaviour(b"", old)
    assert old.aborted is not None and old.aborted[0] == grpc.StatusCode.UNAUTHENTICATED


def test_the_policy_wraps_each_method_once_and_keeps_no_unknown_path() -> None:
    """gRPC asks the interceptor on every RPC: a served method is wrapped on its first call and
    reused; a path nobody serves is asked about each time and never kept."""
    from concurrent import futures

    from firmware.api.metrics import Metrics
    from firmware.api.server import ListenerPolicy, StreamSlots

    policy = ListenerPolicy(Metrics(), StreamSlots(4, 4), futures.ThreadPoolExecutor(1), False)
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: "answered")
    asked: list[str] = []

    def continuation(details: Any) -> Any:
        asked.append(details.method)
        return handler if details.method == _Details.method else None

    first = policy.intercept_service(continuation, _Details())
    assert policy.intercept_service(continuation, _Details()) is first
    unknown = type("Unknown", (), {"method": "/kms.v1.Nothing/Nope", "invocation_metadata": ()})
    assert policy.intercept_service(continuation, unknown()) is None
    assert policy.intercept_service(continuation, unknown()) is None
    assert asked == [_Details.method, unknown.method, unknown.method]
