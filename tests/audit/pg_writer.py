"""The SIGKILL test's child: a process writing one PostgreSQL audit chain from several threads
with the SoftHSM audit key, as fast as it can, until it is killed.

`python -m tests.audit.pg_writer URL CHAIN TOKEN_URI MODULE_PATH` (SOFTHSM2_CONF in the
environment). Prints "ready", then one line "SEQ CORRELATION" for each record once its append
returned (acknowledged), flushed before that thread appends again.
"""

from __future__ import annotations

import sys
import threading

import psycopg

from firmware.audit.log import AuditLog
from firmware.audit.pgmedium import PostgresMedium
from hsm.vault import Pkcs11Vault, VaultSettings

THREADS = 4


def main() -> None:
    url, chain, uri, module = sys.argv[1:5]
    vault = Pkcs11Vault.open(VaultSettings(token_uri=uri, module_path=module), monitor=False)
    log = AuditLog(
        PostgresMedium(lambda: psycopg.connect(url, autocommit=True), chain), vault.audit_hmac
    )
    out = threading.Lock()
    print("ready", flush=True)

    def burst(thread: int) -> None:
        for i in range(10**9):
            correlation = f"kill-{thread}-{i}"
            seq = log.append(float(i), "KEY_RELEASE", {"correlation_id": correlation})
            with out:
                sys.stdout.write(f"{seq} {correlation}\n")
                sys.stdout.flush()

    threads = [threading.Thread(target=burst, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
