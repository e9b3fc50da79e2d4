"""Alarms across a cluster: PostgreSQL LISTEN/NOTIFY between the nodes' alarm buses.

Rules:
- Every alarm a node raises is published (NOTIFY on channel `kmsnode_alarms`, a JSON payload of
  the Alarm's fields) by a background thread, so raising an alarm never waits for the database;
  every node LISTENs on its own connection and delivers the alarms of the other nodes to its bus
  (firmware/audit/alarms.py `deliver`), where the visibility rules apply as for its own.
- An alarm is delivered once per node: a node skips the alarms it published itself (the payload
  names the node).
- Best effort, bounded: alarms wait in a bounded queue for the publisher (the oldest are dropped
  and counted when the database is away); the listener reconnects by itself. Alarms are not
  state: the audit log is the record (an alarm that does not reach another node is still in
  the audit chain of the node that raised it).
- PostgreSQL caps a NOTIFY payload at 8000 bytes: the detail is cut to fit.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any

import psycopg

from firmware.audit.alarms import Alarm

log = logging.getLogger("kmsnode.alarms")

CHANNEL = "kmsnode_alarms"
MAX_DETAIL = 2000
_FIELDS = {f.name for f in fields(Alarm)}


def _payload(alarm: Alarm) -> str:
    data = asdict(alarm)
    data["detail"] = data["detail"][:MAX_DETAIL]
    return json.dumps(data, separators=(",", ":"))


def _alarm(payload: str) -> Alarm | None:
    try:
        data = json.loads(payload)
        if not isinstance(data, dict) or set(data) != _FIELDS:
            return None
        return Alarm(**data)
    except (ValueError, TypeError):
        return None


class AlarmRelay:
    """Publishes this node's alarms and delivers the other nodes' (see the module rules)."""

    def __init__(
        self,
        connect: Callable[[], Any],
        node: str,
        deliver: Callable[[Alarm], None],
        queue_size: int = 1000,
        dropped: Callable[[], None] | None = None,
    ) -> None:
        """`connect()` opens a new autocommit psycopg connection to the cluster's database."""
        self._connect, self.node, self._deliver = connect, node, deliver
        self._dropped = dropped
        self._queue: collections.deque[Alarm] = collections.deque()
        self._size = queue_size
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self.listening = threading.Event()  # set while LISTEN is active (tests wait on it)
        self._threads = [
            threading.Thread(target=self._publisher, name="alarm-publish", daemon=True),
            threading.Thread(target=self._listener, name="alarm-listen", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def publish(self, alarm: Alarm) -> None:
        with self._cv:
            if len(self._queue) >= self._size:
                self._queue.popleft()
                if self._dropped is not None:
                    self._dropped()
            self._queue.append(alarm)
            self._cv.notify()

    def _publisher(self) -> None:
        conn = None
        while not self._stop.is_set():
            with self._cv:
                while not self._queue and not self._stop.is_set():
                    self._cv.wait(1.0)
                if self._stop.is_set():
                    break
                alarm = self._queue[0]
            try:
                if conn is None:
                    conn = self._connect()
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, _payload(alarm)))
            except psycopg.Error as exc:
                log.warning("alarm relay: cannot publish (%s); retrying", type(exc).__name__)
                conn = self._close(conn)
                self._stop.wait(1.0)
                continue
            with self._cv:
                if self._queue and self._queue[0] is alarm:
                    self._queue.popleft()
        self._close(conn)

    def _listener(self) -> None:
        while not self._stop.is_set():
            conn = None
            try:
                conn = self._connect()
                conn.execute(f"LISTEN {CHANNEL}")
                self.listening.set()
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=0.5, stop_after=64):
                        alarm = _alarm(note.payload)
                        if alarm is not None and alarm.node != self.node:
                            self._deliver(alarm)
            except psycopg.Error as exc:
                log.warning("alarm relay: not listening (%s); reconnecting", type(exc).__name__)
                self._stop.wait(1.0)
            finally:
                self.listening.clear()
                self._close(conn)

    @staticmethod
    def _close(conn: Any) -> None:
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        return None

    def close(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
