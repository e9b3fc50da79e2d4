"""Prometheus metrics of the node, served on a loopback port.

Rules: one CollectorRegistry per node (tests run several nodes in one process); names follow
Prometheus conventions (`kmsnode_` prefix, `_total` counters, `_seconds` histograms); labels carry
methods, status codes, operations and alarm reasons, never identities or key material.
Labelled children are looked up once and kept (`Labelled`): `labels()` takes the metric's lock and
checks its values on every call, a measurable share of a request's CPU on the hot paths.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from firmware.core.ports import KeyName, KeyVault, KeyVersionInfo, WrappedKey
from firmware.mikey.prf import PrfFunc

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
HSM_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025, 0.1)


class Labelled:
    """The children of one labelled metric by label values, each made once on first use (a race
    makes the same child twice: prometheus_client returns the existing one)."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kmsnode_requests", "RPCs by method and status", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "kmsnode_request_seconds",
            "RPC latency",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.hsm_latency = Histogram(
            "kmsnode_hsm_op_seconds",
            "HSM operation latency",
            ["op"],
            buckets=HSM_BUCKETS,
            registry=r,
        )
        self.alarms = Counter("kmsnode_alarms", "alarms raised", ["reason"], registry=r)
        self.refusals = Counter(
            "kmsnode_refusals", "refused LI requests", ["method", "reason"], registry=r
        )
        self.alarms_dropped = Counter(
            "kmsnode_alarms_dropped", "alarms dropped from full watcher queues", registry=r
        )
        self.audit_records = Counter("kmsnode_audit_records", "audit records written", registry=r)
        self.hsm_available = Gauge("kmsnode_hsm_available", "1 while the HSM serves", registry=r)

    def serve(self, address: str) -> Any:
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(
            int(port), addr=host or "127.0.0.1", registry=self.registry
        )
        return server


class InstrumentedVault:
    """A KeyVault that times every call into kmsnode_hsm_op_seconds{op}."""

    def __init__(self, inner: Any, metrics: Metrics) -> None:
        self._inner = inner
        self._h = Labelled(metrics.hsm_latency)

    def __getattr__(self, name: str) -> Any:  # lifecycle and adapter extras pass through
        return getattr(self._inner, name)

    def _timed(self, op: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self._h(op).observe(time.perf_counter() - start)

    def ticket_prf(
        self, version: int, prf: PrfFunc, wants: Sequence[tuple[bytes, int]]
    ) -> list[bytes]:
        return self._timed(  # type: ignore[no-any-return]
            "ticket_prf", lambda: self._inner.ticket_prf(version, prf, wants)
        )

    def wrap_psk(self, psk: bytes) -> WrappedKey:
        return self._timed("wrap_psk", lambda: self._inner.wrap_psk(psk))  # type: ignore[no-any-return]

    def psk_prf(
        self, wrapped: WrappedKey, prf: PrfFunc, wants: Sequence[tuple[bytes, int]]
    ) -> list[bytes]:
        return self._timed(  # type: ignore[no-any-return]
            "psk_prf", lambda: self._inner.psk_prf(wrapped, prf, wants)
        )

    def forget_psk(self, wrapped: WrappedKey) -> None:
        self._inner.forget_psk(wrapped)

    def random_bytes(self, n: int) -> bytes:
        return self._timed("random", lambda: self._inner.random_bytes(n))  # type: ignore[no-any-return]

    def audit_hmac(self, data: bytes) -> bytes:
        return self._timed("audit_hmac", lambda: self._inner.audit_hmac(data))  # type: ignore[no-any-return]

    def versions(self, name: KeyName) -> list[KeyVersionInfo]:
        return self._inner.versions(name)  # type: ignore[no-any-return]

    def active_version(self, name: KeyName) -> int:
        return self._inner.active_version(name)  # type: ignore[no-any-return]

    def create_version(self, name: KeyName) -> KeyVersionInfo:
        return self._timed("create_version", lambda: self._inner.create_version(name))  # type: ignore[no-any-return]

    def destroy_version(self, name: KeyName, version: int) -> None:
        self._timed("destroy_version", lambda: self._inner.destroy_version(name, version))

    def available(self) -> bool:
        return self._inner.available()  # type: ignore[no-any-return]


_check: type[KeyVault] = InstrumentedVault
