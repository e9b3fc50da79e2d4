"""AdminService.WatchAlarms collected in a thread.

Rules:
- A watcher is subscribed when its constructor returns (the node sends the stream's initial
  metadata once it has subscribed it), so every alarm raised afterwards reaches it; the wait for
  that is bounded.
- `wait_for` and `wait` wait on a condition with a deadline (no sleeping, no polling) and raise
  AssertionError naming what was not seen and the alarms that were.
- The stream itself has a deadline (`stream_timeout`); `close` cancels it and joins the thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc

DEADLINE = 30.0


class AlarmWatcher:
    """Collects alarms from one WatchAlarms stream (see the module rules)."""

    def __init__(
        self,
        channel: grpc.Channel,
        subscribe_timeout: float = DEADLINE,
        stream_timeout: float = 3600.0,
    ) -> None:
        self._alarms: list[Any] = []
        self._ended: grpc.RpcError | None = None
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._call = kms_pb2_grpc.AdminServiceStub(channel).WatchAlarms(
            kms_pb2.WatchAlarmsRequest(), timeout=stream_timeout
        )
        self._thread = threading.Thread(target=self._read, name="kms-alarms", daemon=True)
        self._thread.start()
        if not self._subscribed.wait(subscribe_timeout):
            self.close()
            raise AssertionError(f"WatchAlarms not subscribed within {subscribe_timeout} s")
        if self._ended is not None:
            raise self._ended

    def _read(self) -> None:
        try:
            self._call.initial_metadata()
            self._subscribed.set()
            for alarm in self._call:
                with self._changed:
                    self._alarms.append(alarm)
                    self._changed.notify_all()
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self._ended = err
        finally:
            self._subscribed.set()
            with self._changed:
                self._changed.notify_all()

    @property
    def alarms(self) -> list[Any]:
        """Every kms.v1 Alarm received so far, in order."""
        with self._changed:
            return list(self._alarms)

    def wait(self, match: Callable[[Any], bool], timeout: float = DEADLINE, what: str = "") -> Any:
        """The first alarm (received or to come within `timeout` s) for which `match` is true."""
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                for alarm in self._alarms:
                    if match(alarm):
                        return alarm
                left = end - time.monotonic()
                if left <= 0 or (self._ended is not None) or not self._thread.is_alive():
                    seen = [(a.reason, a.correlation_id) for a in self._alarms]
                    raise AssertionError(
                        f"no alarm {what or 'matching'} within {timeout} s (seen: {seen})"
                        + (f"; the stream ended: {self._ended.code()}" if self._ended else "")
                    )
                self._changed.wait(left)

    def wait_for(self, correlation_id: str, timeout: float = DEADLINE) -> Any:
        """The alarm of the request with this correlation id."""
        return self.wait(
            lambda a: a.correlation_id == correlation_id, timeout, f"for {correlation_id!r}"
        )

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(timeout=DEADLINE)
