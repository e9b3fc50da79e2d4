"""The alarm bus: every alarm reaches every current watcher before `raise_alarm` returns.

Rules:
- Watchers subscribe and get their own unbounded queue; `raise_alarm` puts the alarm into every
  queue synchronously, so an RPC that raised an alarm returns only after each watcher has it.
- Alarms carry identities, reasons and ids, never key material.
- The bus counts alarms through an optional callback (the metrics); writing the audit record is
  the raiser's job (it knows what happened).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Alarm:
    time: float
    reason: str
    caller: str
    liid: str
    correlation_id: str
    detail: str


class Subscription:
    def __init__(self, bus: AlarmBus) -> None:
        self._bus = bus
        self.queue: queue.SimpleQueue[Alarm] = queue.SimpleQueue()

    def get(self, timeout: float) -> Alarm | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._bus._unsubscribe(self)


class AlarmBus:
    def __init__(
        self, clock: Callable[[], float], counted: Callable[[str], None] | None = None
    ) -> None:
        self._clock = clock
        self._counted = counted
        self._subscribers: list[Subscription] = []
        self._lock = threading.Lock()

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    @property
    def watchers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def raise_alarm(
        self, reason: str, caller: str, liid: str, correlation_id: str, detail: str
    ) -> Alarm:
        alarm = Alarm(self._clock(), reason, caller, liid, correlation_id, detail)
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            sub.queue.put(alarm)
        if self._counted is not None:
            self._counted(reason)
        return alarm
