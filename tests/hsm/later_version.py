"""Child process for key versions that appear while a vault is open.

Usage ($SOFTHSM2_CONF names the token's conf):
  python -m tests.hsm.later_version create <token-uri> <module-path>
      make the next TPK version; prints {"version": n}
  python -m tests.hsm.later_version await <token-uri> <module-path>
      open the vault (making version 1 of each key on a new token), print {"ready": true},
      read a TPK version from stdin, print its ticket HMAC ({"ticket_hmac": hex}) or the
      error ({"error": type name})
"""

from __future__ import annotations

import json
import sys

from firmware.core.ports import KeyName
from firmware.mikey.prf import PrfFunc
from hsm.vault import Pkcs11Vault, VaultSettings


def main(argv: list[str]) -> int:
    command, uri, module = argv
    settings = VaultSettings(token_uri=uri, module_path=module)
    with Pkcs11Vault.open(settings, monitor=False) as vault:
        if command == "create":
            made = vault.create_version(KeyName.TICKET_PROTECTION)
            print(json.dumps({"version": made.version}), flush=True)
            return 0
        vault.ensure_keys()  # version 1 of each key on a new token
        print(json.dumps({"ready": True}), flush=True)
        version = int(sys.stdin.readline())
        try:
            mac = vault.ticket_hmac(version, PrfFunc.PRF_HMAC_SHA_256, b"ticket")
        except Exception as exc:  # the parent asserts on the type
            print(json.dumps({"error": type(exc).__name__}), flush=True)
        else:
            print(json.dumps({"ticket_hmac": mac.hex()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
