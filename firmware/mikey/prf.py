"""The MIKEY PRF (RFC 3830 section 4.1.2) and PRF-HMAC-SHA-256 (RFC 6043 section 6.1).

    P(s, label, m) = HMAC(s, A1 || label) || ... || HMAC(s, Am || label),  A0 = label,
                     Ai = HMAC(s, A(i-1))
    PRF(inkey, label) = P(s1, label, m) XOR ... XOR P(sn, label, m), truncated to outkey_len

Rules:
- inkey is split into 256-bit chunks s1..sn; only the last may be shorter (minisip's bug made an
  empty last chunk when len(inkey) is a multiple of 32 bytes; we do not repeat it).
- m = ceil(outkey_len / hash output length): 160 bits for PRF func 0 (MIKEY-1, HMAC-SHA-1),
  256 bits for PRF func 1 (PRF-HMAC-SHA-256).
- `prf_with_hmac` runs the same chain over an HMAC it does not own (the HSM's C_Sign with the TPK),
  which is exact whenever that key is one chunk (at most 256 bits).
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable

CHUNK_BYTES = 32


class PrfFunc(enum.IntEnum):
    """HDR / Ticket Policy PRF func values (RFC 3830 Table 6.1.d; RFC 6043 Table 6.3)."""

    MIKEY_1 = 0  # HMAC-SHA-1
    PRF_HMAC_SHA_256 = 1

    @property
    def hash_name(self) -> str:
        return "sha1" if self is PrfFunc.MIKEY_1 else "sha256"

    @property
    def digest_size(self) -> int:
        return 20 if self is PrfFunc.MIKEY_1 else 32


def p_chain(mac: Callable[[bytes], bytes], label: bytes, blocks: int) -> bytes:
    """P(s, label, m) of RFC 3830 4.1.2 with `mac` = HMAC(s, .)."""
    out = bytearray()
    a = label
    for _ in range(blocks):
        a = mac(a)
        out += mac(a + label)
    return bytes(out)


def _blocks(func: PrfFunc, out_len: int) -> int:
    return -(-out_len // func.digest_size)


def prf(func: PrfFunc, inkey: bytes, label: bytes, out_len: int) -> bytes:
    """PRF(inkey, label) with `out_len` bytes of output."""
    if not inkey:
        raise ValueError("PRF inkey must not be empty")
    blocks = _blocks(func, out_len)
    name = func.hash_name
    result = bytes(blocks * func.digest_size)
    for start in range(0, len(inkey), CHUNK_BYTES):
        chunk = inkey[start : start + CHUNK_BYTES]

        def mac(data: bytes, k: bytes = chunk) -> bytes:
            return hmac_bytes(k, data, name)

        part = p_chain(mac, label, blocks)
        result = bytes(x ^ y for x, y in zip(result, part, strict=True))
    return result[:out_len]


def prf_with_hmac(
    func: PrfFunc, mac: Callable[[bytes], bytes], label: bytes, out_len: int
) -> bytes:
    """PRF over a single-chunk inkey held elsewhere; `mac(data)` = HMAC(inkey, data)."""
    return p_chain(mac, label, _blocks(func, out_len))[:out_len]


def hmac_digest(func: PrfFunc, key: bytes, data: bytes) -> bytes:
    """HMAC with the hash of `func` (software; for UE-side and test use)."""
    return hmac_bytes(key, data, func.hash_name)


def hmac_bytes(key: bytes, data: bytes, hash_name: str) -> bytes:
    """HMAC(key, data) in software, the GIL held.

    Not `hmac.digest`: OpenSSL's one-shot HMAC releases the GIL on every call, and in the
    multi-threaded server another handler then takes it and the caller waits to get it back
    (two context switches per call, each dearer than the HMAC). `hmac.new` releases it only for
    inputs of 2 KiB or more and costs the same on one thread (2.0 us for 100 bytes, SHA-1).
    """
    return hmac.new(key, data, hash_name).digest()
