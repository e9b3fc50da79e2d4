"""The alarm bus: every alarm reaches every current watcher allowed to see it before
`raise_alarm` returns.

Rules:
- Visibility (contract AdminService, DESIGN.md "Alarms and roles"): a watcher holding ADMIN sees
  every alarm; a DF2 watcher sees the alarms caused by requests made with its own certificate
  (same SHA-256 fingerprint) and node alarms (caused by no request: HSM_REMOVED, TAMPER,
  AUDIT_UNAVAILABLE, ...), which name no LIID. Anybody else sees nothing.
- Each watcher's queue is bounded (`queue_size`); on overflow the oldest alarm is dropped and
  counted (`dropped` callback, the metric), and the watcher's next alarm is one WATCHER_OVERFLOW
  alarm saying how many were lost. A watcher that never reads costs at most `queue_size` alarms.
- At most `per_identity` watchers per certificate identity (the caller's identities), at most
  `max_watchers` in all: `subscribe` refuses more with TooManyStreams.
- A sticky alarm (TAMPER at start: nobody can be watching yet) is also kept, at most
  `sticky_max`, and handed to every watcher that subscribes later, first, if it may see it.
- In a cluster every alarm raised here is also handed to `publish` (the relay to the other
  nodes, firmware/store/alarm_relay.py); alarms other nodes raised arrive through `deliver`,
  reach this node's watchers under the same visibility rules, and are not published again.
- Alarms carry identities, reasons and ids, never key material. The bus counts alarms through an
  optional callback (the metrics); writing the audit record is the raiser's job.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass

from firmware.core.errors import TooManyStreams
from firmware.core.ports import NODE, Caller, Role

WATCHER_OVERFLOW = "WATCHER_OVERFLOW"


@dataclass(frozen=True)
class Alarm:
    time: float
    reason: str
    caller: str  # every identity of the causing certificate, comma-separated; "" for the node
    liid: str
    correlation_id: str
    detail: str
    origin: str = ""  # SHA-256 fingerprint of the causing certificate; "" for node alarms
    node: str = ""  # the node that raised it (a cluster relays alarms between nodes)


def visible_to(alarm: Alarm, watcher: Caller) -> bool:
    """The visibility rule of the module docstring."""
    if watcher.holds(Role.ADMIN):
        return True
    if not watcher.holds(Role.DF2):
        return False
    if not alarm.origin:
        return not alarm.liid
    return alarm.origin == watcher.fingerprint


class Subscription:
    """One watcher: a bounded queue of the alarms it may see."""

    def __init__(self, bus: AlarmBus, watcher: Caller, size: int) -> None:
        self._bus, self.watcher, self._size = bus, watcher, size
        self._queue: collections.deque[Alarm] = collections.deque()
        self._cv = threading.Condition()
        self._lost = 0

    def put(self, alarm: Alarm) -> bool:
        """Queue `alarm`; False when the oldest had to be dropped for it."""
        with self._cv:
            dropped = len(self._queue) >= self._size
            if dropped:
                self._queue.popleft()
                self._lost += 1
            self._queue.append(alarm)
            self._cv.notify()
            return not dropped

    def get(self, timeout: float) -> Alarm | None:
        with self._cv:
            if not self._queue and not self._lost:
                self._cv.wait(timeout)
            if self._lost:
                lost, self._lost = self._lost, 0
                return Alarm(
                    self._bus.now(),
                    WATCHER_OVERFLOW,
                    "",
                    "",
                    "",
                    f"{lost} alarm(s) dropped: this watcher did not read fast enough",
                )
            return self._queue.popleft() if self._queue else None

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._queue)

    def close(self) -> None:
        self._bus._unsubscribe(self)


class AlarmBus:
    def __init__(
        self,
        clock: Callable[[], float],
        counted: Callable[[str], None] | None = None,
        *,
        queue_size: int = 1000,
        per_identity: int = 4,
        max_watchers: int = 64,
        dropped: Callable[[], None] | None = None,
        sticky_max: int = 16,
        node: str = "",
    ) -> None:
        self._clock = clock
        self._counted, self._dropped = counted, dropped
        self.node = node
        self.publish: Callable[[Alarm], None] | None = None
        self.queue_size, self.per_identity, self.max_watchers = (
            queue_size,
            per_identity,
            max_watchers,
        )
        self._subscribers: list[Subscription] = []
        self._sticky: collections.deque[Alarm] = collections.deque(maxlen=sticky_max)
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._clock()

    def subscribe(self, watcher: Caller) -> Subscription:
        """A new watcher; TooManyStreams beyond the caps."""
        with self._lock:
            if len(self._subscribers) >= self.max_watchers:
                raise TooManyStreams("too many alarm watchers on this node")
            same = sum(1 for s in self._subscribers if s.watcher.name == watcher.name)
            if same >= self.per_identity:
                raise TooManyStreams(f"at most {self.per_identity} alarm watchers per identity")
            sub = Subscription(self, watcher, self.queue_size)
            self._subscribers.append(sub)
            for alarm in self._sticky:
                if visible_to(alarm, watcher):
                    sub.put(alarm)
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
        self,
        reason: str,
        caller: Caller = NODE,
        liid: str = "",
        correlation_id: str = "",
        detail: str = "",
        *,
        sticky: bool = False,
    ) -> Alarm:
        alarm = Alarm(
            self._clock(),
            reason,
            caller.name if caller.identities else "",
            liid,
            correlation_id,
            detail,
            # a request always has an origin, so its alarm never passes for a node alarm
            caller.fingerprint or ("" if caller == NODE else "unidentified"),
            self.node,
        )
        self._fan_out(alarm, sticky)
        if self._counted is not None:
            self._counted(reason)
        if self.publish is not None:
            self.publish(alarm)
        return alarm

    def deliver(self, alarm: Alarm) -> None:
        """An alarm another node raised: to this node's watchers, not published again."""
        self._fan_out(alarm, sticky=alarm.reason == "TAMPER")

    def _fan_out(self, alarm: Alarm, sticky: bool) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
            if sticky:
                self._sticky.append(alarm)
        for sub in subscribers:
            if visible_to(alarm, sub.watcher) and not sub.put(alarm) and self._dropped:
                self._dropped()
