"""The one place that decides what a refused LI request leaves behind: one alarm, one audit
record, one metric count. The api turns the error into the status afterwards; nothing else may
answer a refusal, so no future refusal can skip its alarm (DESIGN.md "Xk GetKeys").

Rules:
- Every refusal raises one alarm (reason = the error's ErrorInfo reason) naming every identity of
  the caller's certificate, the LIID and correlation id, before the RPC returns; the alarm goes
  out even when the audit record cannot be written.
- Every refusal writes one audit record (KEY_REFUSED for GetKeys; else ROLE_REFUSED or
  REQUEST_REFUSED) with the caller's identities, certificate fingerprint, method, reason, the
  error's text and the request's described fields (firmware/core/fields.describe: capped,
  control characters escaped). Never key material: callers pass only identities, ids and
  reasons. When the record cannot be written, a caller's refusal is answered AUDIT_UNAVAILABLE
  instead (the node cannot account for it); a node-side error (HSM, audit or store unavailable)
  keeps its own answer.
- A caller that holds no role is accountable to nobody: its refusals are written at most
  `unknown_per_second` per certificate per second; the rest are counted and summarised in one
  AUDIT_SUPPRESSED record (caller, count) written with that certificate's next record (or by
  `flush` when the node stops), so a certificate cannot fill the disk. Callers with a role are
  never suppressed (every refusal of a DF2 is evidence).
- The clock is passed in; the limiter keeps at most `max_tracked` certificates. The least
  recently seen is dropped, and its suppressed count, if any, is summarised at once (an
  AUDIT_SUPPRESSED record naming it): dropping one only ever lets a record through, and no
  suppressed refusal goes uncounted.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from firmware.core.errors import AuditUnavailable, CallerError, KmsError, RoleNotAllowed
from firmware.core.fields import describe
from firmware.core.ports import AlarmSink, AuditSink, Caller

log = logging.getLogger("kmsnode.refusals")

REFUSED_EVENT = {"GetKeys": "KEY_REFUSED"}
ROLE_REFUSED = "ROLE_REFUSED"


@dataclass
class _Bucket:
    second: int
    written: int
    suppressed: int


class AuditRateLimit:
    """Per-certificate cap on refusal records of callers that hold no role."""

    def __init__(self, per_second: int, max_tracked: int = 4096) -> None:
        self.per_second, self.max_tracked = per_second, max_tracked
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, key: str, now: float) -> tuple[bool, list[tuple[str, int]]]:
        """(write this record?, the (certificate, count) summaries of suppressed records to write
        now: `key`'s own before this record, and those of certificates dropped to make room)."""
        second = int(now)
        summaries: list[tuple[str, int]] = []
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(second, 0, 0)
                while len(self._buckets) > self.max_tracked:
                    dropped, old = self._buckets.popitem(last=False)
                    if old.suppressed:
                        summaries.append((dropped, old.suppressed))
            self._buckets.move_to_end(key)
            if bucket.second != second:
                bucket.second, bucket.written = second, 0
            if bucket.written >= self.per_second:
                bucket.suppressed += 1
                return False, summaries
            bucket.written += 1
            if bucket.suppressed:
                summaries.append((key, bucket.suppressed))
                bucket.suppressed = 0
            return True, summaries

    def take_suppressed(self) -> list[tuple[str, int]]:
        """(certificate, count) of every refusal suppressed and not yet summarised; resets."""
        with self._lock:
            taken = [(k, b.suppressed) for k, b in self._buckets.items() if b.suppressed]
            for bucket in self._buckets.values():
                bucket.suppressed = 0
            return taken


class Refusals:
    """alarm + audit + metric for every refused request."""

    def __init__(
        self,
        audit: AuditSink,
        alarms: AlarmSink,
        clock: Callable[[], float],
        counted: Callable[[str, str], None] | None = None,
        unknown_per_second: int = 10,
    ) -> None:
        self.audit, self.alarms, self.clock = audit, alarms, clock
        self.counted = counted
        self.limit = AuditRateLimit(unknown_per_second)

    def refuse(
        self,
        caller: Caller,
        method: str,
        error: KmsError,
        fields: Mapping[str, str] | None = None,
    ) -> KmsError:
        """Record the refusal of `method` for `caller`; returns the error to answer with."""
        now = self.clock()
        safe = {k: describe(v) for k, v in (fields or {}).items()}
        reason, detail = error.reason, str(error)
        answer = error
        try:
            self._write(caller, method, error, safe, now)
        except AuditUnavailable as exc:
            log.error("audit record of a refused %s could not be written", method)
            if isinstance(error, CallerError):
                answer = exc
        finally:  # the alarm goes out even when the record cannot be written
            self.alarms.raise_alarm(
                reason, caller, safe.get("liid", ""), safe.get("correlation_id", ""), detail
            )
            if self.counted is not None:
                self.counted(method, reason)
        return answer

    def flush(self) -> None:
        """Summarise what is suppressed so far (the node calls it when it stops)."""
        now = self.clock()
        for fingerprint, count in self.limit.take_suppressed():
            self.audit.append(
                now, "AUDIT_SUPPRESSED", {"fingerprint": fingerprint, "suppressed": count}
            )

    def _write(
        self,
        caller: Caller,
        method: str,
        error: KmsError,
        fields: Mapping[str, str],
        now: float,
    ) -> None:
        who = caller.who()
        if not caller.roles:
            key = caller.fingerprint or caller.name
            write, summaries = self.limit.admit(key, now)
            for certificate, count in summaries:
                named = who if certificate == key else {"fingerprint": certificate}
                self.audit.append(now, "AUDIT_SUPPRESSED", {**named, "suppressed": count})
            if not write:
                return
        event = REFUSED_EVENT.get(method) or (
            ROLE_REFUSED if isinstance(error, RoleNotAllowed) else "REQUEST_REFUSED"
        )
        record = {**who, "method": method, "reason": error.reason, "detail": str(error)}
        self.audit.append(now, event, {**record, **fields})
