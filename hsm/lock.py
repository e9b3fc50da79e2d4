"""The one process-wide lock around every PKCS#11 call.

Rules:
- No two PKCS#11 calls ever overlap in this process. python-pkcs11 0.10 calls C_Initialize(NULL)
  and releases the GIL around every C call; SoftHSM 2.6.1 then corrupts its heap when two threads
  call it (spec/hsm-pkcs11.md: 15 of 15 unlocked runs crashed, 12 of 12 locked runs clean). Every
  call (load, open, login, find, copy, crypto, destroy, close, finalize) runs inline under
  PKCS11_LOCK; anything else in the process that calls PKCS#11 (tests, the image's PKCS#11
  signer) takes it too. Inline calls under a lock were measured faster than handing calls to an
  owning thread, and threads never scale on SoftHSM (processes do: one vault per process, created
  after fork).
- Reentrant, so a vault operation may call another one while holding it (ensure_keys creating
  versions); listeners are still called outside it (hsm/monitor.py).
"""

from __future__ import annotations

import threading

PKCS11_LOCK = threading.RLock()
