"""What a wrapped PSK computes: the MIKEY PRF of its bytes, for both PRFs and several lengths.

A vault never hands a PSK back (hsm/psks.py), so a test proves a wrapped PSK is the PSK it wrapped
by comparing the vault's `psk_prf` with the software PRF (firmware/mikey/prf.py) over the bytes.
"""

from __future__ import annotations

from typing import Any

from firmware.core.ports import WrappedKey
from firmware.mikey.prf import PrfFunc, prf

LABEL = bytes(range(0x20, 0x48))
LENGTHS = (16, 32, 46)  # one block, a whole SHA-256 block, several blocks of each hash


def outputs(vault: Any, wrapped: WrappedKey) -> list[bytes]:
    """The vault's PRF outputs of `wrapped` (KeyVault.psk_prf)."""
    return [
        out for f in PrfFunc for out in vault.psk_prf(wrapped, f, [(LABEL, n) for n in LENGTHS])
    ]


def expected(psk: bytes) -> list[bytes]:
    """The same outputs in software from the PSK's bytes."""
    return [prf(f, psk, LABEL, n) for f in PrfFunc for n in LENGTHS]
