"""Is the system clock synchronised? (adjtimex(2), read only.)

Rules:
- Timestamps decide replay and ticket validity (RFC 3830 5.4), so a node whose clock may be off
  by more than the allowed skew must not serve ([policy] require_clock_sync, on for the
  appliance): the kernel's clock state says so, as NTP daemons (systemd-timesyncd) set it.
- Synchronised means: the kernel does not report STA_UNSYNC / TIME_ERROR, and its maximum error
  estimate is within the node's clock skew.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

STA_UNSYNC = 0x0040
TIME_ERROR = 5


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class ClockState:
    synchronised: bool  # the kernel's word (an NTP daemon has disciplined the clock)
    max_error: float  # seconds, the kernel's estimate of the worst error

    def within(self, skew: float) -> bool:
        return self.synchronised and self.max_error <= skew


def clock_state() -> ClockState:
    """The kernel's clock state now."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    timex = _Timex()
    result = libc.adjtimex(ctypes.byref(timex))
    if result < 0:
        raise OSError(ctypes.get_errno(), "adjtimex failed")
    synced = result != TIME_ERROR and not timex.status & STA_UNSYNC
    return ClockState(bool(synced), timex.maxerror / 1e6)
