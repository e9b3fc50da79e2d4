"""Test doubles of the audit tests: an HMAC key standing in for the HSM audit key, and a head
store that keeps the real stores' rule (a stored head is never lowered) by failing the test."""

from __future__ import annotations

import hashlib
import hmac

KEY = b"k" * 32


def mac(data: bytes) -> bytes:
    return hmac.digest(KEY, data, hashlib.sha256)


def other_mac(data: bytes) -> bytes:
    return hmac.digest(b"x" * 32, data, hashlib.sha256)


class LoweredHead(AssertionError):
    """The log tried to lower a stored head (the real stores raise AuditHeadRegression)."""


class Heads:
    """HeadStore in memory; `set_audit_head` refuses a lower count, or the same count with
    another MAC, as the SQLite and PostgreSQL stores do."""

    def __init__(self) -> None:
        self.head: tuple[int, bytes] | None = None
        self.writes = 0
        self.durable: list[bool] = []  # per write: asked to be durable before returning

    def audit_head(self) -> tuple[int, bytes] | None:
        return self.head

    def set_audit_head(self, count: int, mac: bytes, durable: bool = True) -> None:
        if self.head is not None and (
            count < self.head[0] or (count == self.head[0] and mac != self.head[1])
        ):
            raise LoweredHead(f"head {self.head[0]} lowered to {count}")
        self.head = (count, mac)
        self.writes += 1
        self.durable.append(durable)
