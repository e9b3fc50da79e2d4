"""Process hardening of `kmsnode serve` (DESIGN.md "Failure behaviour").

Rules:
- The node never dumps core (RLIMIT_CORE 0, hard limit too) and is not dumpable
  (PR_SET_DUMPABLE 0): no core file and no ptrace by other users of the machine can read a PIN, a
  PSK in transit or a session key out of its memory. The appliance unit adds LimitCORE=0.
- Files the node creates are private (umask 077), whatever the umask it was started with.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def _prctl(option: int, value: int = 0) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    result = int(libc.prctl(option, value, 0, 0, 0))
    if result < 0:
        raise OSError(ctypes.get_errno(), "prctl failed")
    return result


def harden() -> None:
    """Apply the module's rules to this process (call first thing in `serve`)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(PR_SET_DUMPABLE, 0)
    os.umask(0o077)


def dumpable() -> bool:
    """Whether this process may dump core or be ptraced (for tests and diagnostics)."""
    return _prctl(PR_GET_DUMPABLE) != 0
