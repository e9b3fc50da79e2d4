"""Child process for start-refusal tests: open a vault on $SOFTHSM2_CONF and report as JSON.

Usage: python -m tests.hsm.open_vault <token-uri> <module-path>. Logs go to stderr at DEBUG, so the
parent can check that no PIN appears in any log line either.
"""

from __future__ import annotations

import json
import logging
import sys

from hsm.vault import Pkcs11Vault, VaultSettings


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    uri, module = argv
    try:
        vault = Pkcs11Vault.open(VaultSettings(token_uri=uri, module_path=module), monitor=False)
    except Exception as exc:
        logging.getLogger("open_vault").error("refused: %s", exc)
        print(json.dumps({"ok": False, "type": type(exc).__name__, "message": str(exc)}))
        return 0
    vault.close()
    print(json.dumps({"ok": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
