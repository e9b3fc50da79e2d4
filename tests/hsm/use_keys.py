"""Child process: use a token's keys and print the results as one JSON line.

Usage: python -m tests.hsm.use_keys <token-uri> <module-path> <tpk-version> [<wrapped-psk-hex>]
($SOFTHSM2_CONF names the token's conf). Prints the ticket HMAC and PRF of the TPK version, the
audit HMAC, a PSK wrapped under the active KEK, and the PRF outputs of <wrapped-psk-hex> (v1
KEK; tests/hsm/psk_check.py).
"""

from __future__ import annotations

import json
import sys

from firmware.core.ports import WrappedKey
from firmware.mikey.prf import PrfFunc
from hsm.vault import Pkcs11Vault, VaultSettings
from tests.hsm.psk_check import outputs

PSK = bytes(range(32))


def main(argv: list[str]) -> int:
    uri, module, version = argv[0], argv[1], int(argv[2])
    with Pkcs11Vault.open(VaultSettings(token_uri=uri, module_path=module), monitor=False) as v:
        out = {
            "ticket_hmac": v.ticket_hmac(version, PrfFunc.PRF_HMAC_SHA_256, b"ticket").hex(),
            "ticket_prf": v.ticket_prf(version, PrfFunc.MIKEY_1, [(b"label", 48)])[0].hex(),
            "audit_hmac": v.audit_hmac(b"record").hex(),
            "wrapped_psk": v.wrap_psk(PSK).blob.hex(),
        }
        if len(argv) > 3:
            wrapped = WrappedKey(1, bytes.fromhex(argv[3]))
            out["psk_prf"] = b"".join(outputs(v, wrapped)).hex()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
