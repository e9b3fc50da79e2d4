"""Timestamp window and replay cache for authenticated MIKEY messages (RFC 3830 section 5.4).

Rules:
- A clock timestamp (NTP-UTC, NTP, NTP-UTC-32) is accepted only within `skew` seconds of now.
- Only authenticated messages enter the cache (RFC 3830 5.4: caching unauthenticated messages
  would let anyone fill it); an entry is kept until its timestamp leaves the window, after which
  the window check alone refuses a replay.
- The cache lives in memory. After a restart it is empty, so every message stamped before the
  node started is refused (`started_at`): such a message might have been accepted before the
  restart. This only bites during the first skew interval, as RFC 3830 5.4 allows.
- A full cache refuses new messages (fail closed) instead of forgetting entries that may still
  be replayed.
- COUNTER timestamps carry no time: they must increase strictly per sender; the last value is
  kept by the caller's store so that it survives restarts.
- NTP seconds are read with the RFC 4330 era rule: a most significant bit of 0 means era 1
  (after 7 Feb 2036).
"""

from __future__ import annotations

import heapq
import threading

NTP_UNIX_OFFSET = 2_208_988_800
ERA = 1 << 32


def ntp_seconds_to_unix(seconds: int) -> float:
    """NTP seconds (32 bits) to unix time, era-extended per RFC 4330 section 3."""
    era = 0 if seconds & 0x8000_0000 else ERA
    return float(seconds + era - NTP_UNIX_OFFSET)


def ntp64_to_unix(value: int) -> float:
    """64-bit NTP timestamp (seconds << 32 | fraction) to unix time."""
    return ntp_seconds_to_unix(value >> 32) + (value & 0xFFFF_FFFF) / ERA


def unix_to_ntp64(unix: float) -> int:
    seconds = int(unix) + NTP_UNIX_OFFSET
    fraction = int((unix - int(unix)) * ERA) & 0xFFFF_FFFF
    return ((seconds % ERA) << 32) | fraction


class StaleTimestamp(Exception):
    """The timestamp is outside the window, before the node's start, or already seen."""


class ReplayCache:
    """Thread-safe memory of authenticated messages inside the window."""

    def __init__(self, skew: float, started_at: float, capacity: int = 1_000_000) -> None:
        self.skew = skew
        self.started_at = started_at
        self.capacity = capacity
        self._seen: dict[bytes, float] = {}
        self._expiry: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()

    def check_time(self, stamp: float, now: float) -> None:
        """Refuse a clock timestamp outside the window or from before the node's start."""
        if abs(stamp - now) > self.skew:
            raise StaleTimestamp("timestamp outside the allowed clock skew")
        if stamp < self.started_at:
            raise StaleTimestamp("timestamp precedes the node's start (replay cache was reset)")

    def admit(self, key: bytes, stamp: float, now: float) -> None:
        """Record an authenticated message; StaleTimestamp when it was seen before or the cache
        is full. `key` identifies the message (e.g. its MAC); `stamp` its time."""
        with self._lock:
            self._expire(now)
            if key in self._seen:
                raise StaleTimestamp("message replayed")
            if len(self._seen) >= self.capacity:
                raise StaleTimestamp("replay cache full; refusing until entries expire")
            until = max(stamp, now) + self.skew
            self._seen[key] = until
            heapq.heappush(self._expiry, (until, key))

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            _, key = heapq.heappop(self._expiry)
            self._seen.pop(key, None)

    def __len__(self) -> int:
        return len(self._seen)
