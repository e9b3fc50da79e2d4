"""MIKEY crypto: key derivations K1..K7, KEMAC encryption, V MACs (RFC 3830 4.1-4.2, RFC 6043 5.1,
App. A.2).

Rules and invariants:
- A key source (``KeySource``) is either the key bytes or a ``PrfPort``: ``port(wants)`` returns
  PRF(key, label) truncated to out_len for each (label, out_len) of ``wants``, in order, for a
  key that lives elsewhere (the HSM's TPK, a user's PSK), so one call into the HSM's port derives
  a whole key set (encr/salt/auth: six HMACs or more).  Port keys must be one PRF chunk
  (<= 256 bits); ``hmac_port`` makes a port from an HMAC ``mac(data)``.
- ``fast_prf`` is the PRF of prf.py (same output, tested) without per-byte Python loops.
- Which PRF (spec Q5, RFC text): K1/K2 (message keys) and K3 (TEK from TGK, RFC 6043 5.1.3 says
  "the PRF indicated in the HDR payload") use the HDR PRF func; K5 (TPK, A.2.1), K6 (MPK, A.2.2)
  and K7 (forking, 5.1.1) use the Ticket Policy PRF func as the RFC states, and K4 (Vr key, 6.10,
  where the RFC names no PRF) uses the Ticket Policy PRF too, because its inkey MPKr is a ticket
  key like those of K6/K7.
- AES-CM IV (RFC 3830 4.2.3): (S XOR (0x0000 || CSB ID || T)) || 0x0000, T the 64-bit timestamp.
  Which T (spec Q4): the T payload of the message carrying the KEMAC (RFC 3830 4.2.3 says "T is the
  timestamp" of the message; RFC 6043 requires the KMS's responses to carry a fresh T, and nothing
  says to reuse the request's), and the ticket's T with CSB ID 0xFFFFFFFF for the base-ticket KEMAC
  (RFC 6043 A.1).
- AES-KW-128 uses the 64-bit salt_key as RFC 3394's initial value (RFC 3830 4.2.3); it is built
  here on AES-ECB because ``cryptography``'s key wrap has a fixed IV.
- MAC comparison is constant-time (hmac.compare_digest); failures raise MikeyError(AUTH_FAILURE).
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from firmware.mikey.constants import (
    CONST_AUTH,
    CONST_ENCR,
    CONST_MPKI,
    CONST_MPKR,
    CONST_MPKR_FORKED,
    CONST_SALT,
    CONST_TEK,
    CONST_TGK_FORKED,
    CONST_TGK_SALT,
    EncrAlg,
    ErrNo,
    MacAlg,
)
from firmware.mikey.errors import MikeyError
from firmware.mikey.prf import CHUNK_BYTES, PrfFunc, hmac_bytes, prf_with_hmac

PrfPort = Callable[[Sequence[tuple[bytes, int]]], list[bytes]]
KeySource = bytes | PrfPort
_U32 = struct.Struct("!I")
_LABEL_HEAD = struct.Struct("!IBIB")
_FF4 = b"\xff\xff\xff\xff"
_HASH = ("sha1", "sha256")
_DLEN = (20, 32)

_KEY_CONSTS = (CONST_ENCR, CONST_SALT, CONST_AUTH)

# label selectors (RFC 6043 5.1, 6.10, A.2)
SEL_FORK = 0x00
SEL_INITIAL = 0x01
SEL_RESPONSE = 0x02
SEL_TEK = 0x03
SEL_VR = 0x04
SEL_TPK = 0x05
SEL_MPK = 0x06


def fast_prf(func: PrfFunc, inkey: KeySource, label: bytes, out_len: int) -> bytes:
    """MIKEY PRF (RFC 3830 4.1.2; RFC 6043 6.1 for PRF-HMAC-SHA-256), 256-bit inkey chunks."""
    if not isinstance(inkey, bytes):
        return inkey(((label, out_len),))[0]
    if not inkey:
        raise MikeyError("PRF inkey is empty", -1)
    name = _HASH[func]
    digest = hmac_bytes
    if len(inkey) <= CHUNK_BYTES and out_len <= _DLEN[func]:  # hot path: one chunk, one block
        return digest(inkey, digest(inkey, label, name) + label, name)[:out_len]
    blocks = -(-out_len // _DLEN[func])
    acc = 0
    for start in range(0, len(inkey), CHUNK_BYTES):
        s = inkey[start : start + CHUNK_BYTES]
        a = label
        parts = []
        for _ in range(blocks):
            a = digest(s, a, name)
            parts.append(digest(s, a + label, name))
        chunk_out = b"".join(parts)
        if start == 0:
            first = chunk_out
        else:
            acc ^= int.from_bytes(chunk_out, "big")
    if acc:
        first = (int.from_bytes(first, "big") ^ acc).to_bytes(len(first), "big")
    return first[:out_len]


def hmac_port(func: PrfFunc, mac: Callable[[bytes], bytes]) -> PrfPort:
    """The PrfPort of a one-chunk key reached through `mac(data)` = HMAC(key, data)."""
    return lambda wants: [prf_with_hmac(func, mac, label, n) for label, n in wants]


def _rand_part(rand: bytes | None) -> bytes:
    if rand is None:
        return b"\x00"
    if len(rand) > 255:
        raise MikeyError("RAND longer than 255 bytes", -1)
    return bytes((len(rand),)) + rand


# --- labels --------------------------------------------------------------------------------------


def message_key_label(
    const: int, csb_id: int, selector: int, rand_i: bytes | None, rand_r: bytes | None
) -> bytes:
    """K1 (selector 0x01) / K2 (0x02): const || 0xFF || CSB ID || sel || len RANDRi || RANDRi ||
    len RANDRr || RANDRr (RFC 6043 5.1.2)."""
    return _LABEL_HEAD.pack(const, 0xFF, csb_id, selector) + _rand_part(rand_i) + _rand_part(rand_r)


def tek_label(const: int, cs_id: int, rand_i: bytes | None, rand_r: bytes | None) -> bytes:
    """K3: const || CS ID || 0xFFFFFFFF || 0x03 || len RANDRi || [RANDRi] || len RANDRr ||
    [RANDRr] (RFC 6043 5.1.3)."""
    return b"".join(
        (_U32.pack(const), bytes((cs_id,)), _FF4, b"\x03", _rand_part(rand_i), _rand_part(rand_r))
    )


def vr_label(const: int) -> bytes:
    """K4: const || 0xFF || 0xFFFFFFFF || 0x04 (RFC 6043 6.10)."""
    return _U32.pack(const) + b"\xff" + _FF4 + b"\x04"


def ticket_label(const: int, selector: int, rand: bytes) -> bytes:
    """K5 (0x05, TPK) / K6 (0x06, MPK): const || 0xFF || 0xFFFFFFFF || sel || len RAND || RAND."""
    return _U32.pack(const) + b"\xff" + _FF4 + bytes((selector,)) + _rand_part(rand)


def fork_label(const: int, id_data: bytes, rand_kms: bytes) -> bytes:
    """K7: const || 0xFF || 0xFFFFFFFF || 0x00 || len16 ID Data || ID Data || len RANDRkms ||
    RANDRkms (RFC 6043 5.1.1)."""
    if len(id_data) > 0xFFFF:
        raise MikeyError("ID Data longer than 65535 bytes", -1, ErrNo.INVALID_ID)
    return b"".join(
        (_U32.pack(const), b"\xff", _FF4, b"\x00", struct.pack("!H", len(id_data)), id_data,
         _rand_part(rand_kms))
    )  # fmt: skip


# --- derived key sets ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageKeys:
    """encr_key / auth_key / salt_key protecting one MIKEY message (or a ticket)."""

    encr_key: bytes = field(repr=False)
    auth_key: bytes = field(repr=False)
    salt_key: bytes = field(repr=False)


def derive_keys(
    func: PrfFunc,
    inkey: KeySource,
    label_for: Callable[[int], bytes],
    encr_alg: EncrAlg,
    mac_alg: MacAlg,
) -> MessageKeys:
    """encr/auth/salt keys with lengths fixed by the algorithms (RFC 3830 4.1.4); a port
    derives the set in one call."""
    lengths = (encr_alg.key_len, encr_alg.salt_len, mac_alg.key_len)
    wants = [(label_for(c), n) for c, n in zip(_KEY_CONSTS, lengths, strict=True) if n]
    if isinstance(inkey, bytes):
        got = [fast_prf(func, inkey, label, n) for label, n in wants]
    else:
        got = inkey(wants)
    keys = iter(got)
    encr, salt, auth = (next(keys) if n else b"" for n in lengths)
    return MessageKeys(encr, auth, salt)


def message_keys(
    func: PrfFunc,
    inkey: KeySource,
    csb_id: int,
    *,
    response: bool,
    rand_i: bytes | None,
    rand_r: bytes | None,
    encr_alg: EncrAlg = EncrAlg.NULL,
    mac_alg: MacAlg = MacAlg.HMAC_SHA_1_160,
) -> MessageKeys:
    """K1 (initial messages) / K2 (responses) from a PSK, envelope key, MPKi or MPKr'."""
    sel = SEL_RESPONSE if response else SEL_INITIAL
    return derive_keys(
        func, inkey, lambda c: message_key_label(c, csb_id, sel, rand_i, rand_r), encr_alg, mac_alg
    )


def auth_key(
    func: PrfFunc,
    inkey: KeySource,
    csb_id: int,
    *,
    response: bool,
    rand_i: bytes | None,
    rand_r: bytes | None,
    mac_alg: MacAlg,
) -> bytes:
    """Only the K1/K2 auth_key (the hot path of MAC verification)."""
    sel = SEL_RESPONSE if response else SEL_INITIAL
    label = message_key_label(CONST_AUTH, csb_id, sel, rand_i, rand_r)
    return fast_prf(func, inkey, label, mac_alg.key_len)


def ticket_keys(
    func: PrfFunc, tpk: KeySource, rand: bytes, encr_alg: EncrAlg, mac_alg: MacAlg
) -> MessageKeys:
    """K5: base-ticket encr/auth/salt keys from the TPK (RFC 6043 A.2.1), TP PRF."""
    return derive_keys(func, tpk, lambda c: ticket_label(c, SEL_TPK, rand), encr_alg, mac_alg)


def mpk_split(func: PrfFunc, mpk: bytes, rand: bytes) -> tuple[bytes, bytes]:
    """K6: (MPKi, MPKr) from the ticket MPK and ticket RAND (RFC 6043 A.2.2), TP PRF."""
    n = len(mpk)
    return (
        fast_prf(func, mpk, ticket_label(CONST_MPKI, SEL_MPK, rand), n),
        fast_prf(func, mpk, ticket_label(CONST_MPKR, SEL_MPK, rand), n),
    )


def vr_auth_key(func: PrfFunc, mpkr: bytes, mac_alg: MacAlg) -> bytes:
    """K4: auth_key of Vr in Initiator Data, from the unforked MPKr (RFC 6043 6.10)."""
    return fast_prf(func, mpkr, vr_label(CONST_AUTH), mac_alg.key_len)


def fork_mpkr(func: PrfFunc, mpkr: bytes, id_data: bytes, rand_kms: bytes) -> bytes:
    """K7: MPKr' (RFC 6043 5.1.1), TP PRF."""
    return fast_prf(func, mpkr, fork_label(CONST_MPKR_FORKED, id_data, rand_kms), len(mpkr))


def fork_tgk(func: PrfFunc, tgk: bytes, id_data: bytes, rand_kms: bytes) -> bytes:
    """K7: TGK' (RFC 6043 5.1.1), TP PRF."""
    return fast_prf(func, tgk, fork_label(CONST_TGK_FORKED, id_data, rand_kms), len(tgk))


def tek(
    func: PrfFunc,
    tgk: bytes,
    cs_id: int,
    rand_i: bytes | None,
    rand_r: bytes | None,
    length: int = 16,
) -> bytes:
    """K3: TEK for one crypto session from a TGK, TGK' or GTGK (RFC 6043 5.1.3), HDR PRF."""
    return fast_prf(func, tgk, tek_label(CONST_TEK, cs_id, rand_i, rand_r), length)


def tek_salt(
    func: PrfFunc,
    tgk: bytes,
    cs_id: int,
    rand_i: bytes | None,
    rand_r: bytes | None,
    length: int = 14,
) -> bytes:
    """K3 salting key (0x39A2C14B); used only when the key data carries no salt."""
    return fast_prf(func, tgk, tek_label(CONST_TGK_SALT, cs_id, rand_i, rand_r), length)


# --- algorithm strength (RFC 6043 12.1) ---------------------------------------------------------

STRONG_PRFS = frozenset({PrfFunc.PRF_HMAC_SHA_256})
STRONG_ENCR = frozenset({EncrAlg.AES_CM_256})
STRONG_MACS = frozenset({MacAlg.HMAC_SHA_256_256})
MIN_KEY_LEN = 16  # "All keys ... MUST have adequate strength/length, i.e., 128 bits or more"


def is_strong_prf(prf: PrfFunc) -> bool:
    return prf in STRONG_PRFS


def is_strong_encr(alg: EncrAlg) -> bool:
    return alg in STRONG_ENCR


def is_strong_mac(alg: MacAlg) -> bool:
    return alg in STRONG_MACS


def mac_for(prf: PrfFunc) -> MacAlg:
    """The V / ticket MAC of the same strength as ``prf``."""
    return MacAlg.HMAC_SHA_256_256 if is_strong_prf(prf) else MacAlg.HMAC_SHA_1_160


def encr_for(prf: PrfFunc) -> EncrAlg:
    """The KEMAC encryption of the same strength as ``prf``."""
    return EncrAlg.AES_CM_256 if is_strong_prf(prf) else EncrAlg.AES_CM_128


def check_strength(
    prf: PrfFunc,
    *,
    encr_alg: EncrAlg = EncrAlg.NULL,
    mac_alg: MacAlg = MacAlg.NULL,
    key_lengths: tuple[int, ...] = (),
) -> None:
    """Refuse (MikeyError) what RFC 6043 12.1 forbids a builder to produce: 256-bit algorithms
    mixed with weaker ones ("The 256-bit algorithms SHOULD be used together, and they SHALL NOT
    be mixed with algorithms using key sizes less than 256 bits"; NULL is no algorithm), keys
    shorter than 128 bits, and 128-bit encryption for longer keys ("If session keys
    (TEK/TGK/GTGK) longer than 128 bits are used, 128-bit algorithms SHALL NOT be used")."""
    strong = is_strong_prf(prf)
    if encr_alg is not EncrAlg.NULL and is_strong_encr(encr_alg) != strong:
        raise MikeyError(f"{encr_alg.name} does not match the strength of {prf.name}", -1,
                         ErrNo.INVALID_EA)  # fmt: skip
    if mac_alg is not MacAlg.NULL and is_strong_mac(mac_alg) != strong:
        raise MikeyError(f"{mac_alg.name} does not match the strength of {prf.name}", -1,
                         ErrNo.INVALID_MAC)  # fmt: skip
    if key_lengths and min(key_lengths) < MIN_KEY_LEN:
        raise MikeyError("keys MUST be 128 bits or more", -1, ErrNo.UNSPECIFIED)
    if key_lengths and max(key_lengths) > 16 and encr_alg.key_len == 16:
        raise MikeyError(f"keys longer than 128 bits under {encr_alg.name}", -1, ErrNo.INVALID_EA)


# --- MAC -----------------------------------------------------------------------------------------


def compute_mac(mac_alg: MacAlg, key: bytes, data: bytes) -> bytes:
    if mac_alg is MacAlg.NULL:
        return b""
    return hmac_bytes(key, data, mac_alg.hash_name)


def mac_matches(mac_alg: MacAlg, key: bytes, data: bytes, mac: bytes) -> bool:
    """Whether ``mac`` is the MAC of ``data`` (constant-time); a NULL MAC authenticates nothing:
    MikeyError(INVALID_MAC)."""
    if mac_alg is MacAlg.NULL:
        raise MikeyError("NULL MAC cannot authenticate", -1, ErrNo.INVALID_MAC)
    return hmac.compare_digest(hmac_bytes(key, data, mac_alg.hash_name), mac)


def check_mac(mac_alg: MacAlg, key: bytes, data: bytes, mac: bytes) -> None:
    """Raise MikeyError(AUTH_FAILURE) unless ``mac`` is the MAC of ``data``."""
    if not mac_matches(mac_alg, key, data, mac):
        raise MikeyError("MAC verification failed", -1, ErrNo.AUTH_FAILURE)


# --- KEMAC encryption ----------------------------------------------------------------------------


def aes_cm_iv(salt_key: bytes, csb_id: int, t64: bytes) -> bytes:
    """(S XOR (0x0000 || CSB ID || T)) || 0x0000 (RFC 3830 4.2.3)."""
    if len(salt_key) != 14 or len(t64) != 8:
        raise MikeyError("AES-CM needs a 112-bit salt and a 64-bit T", -1, ErrNo.INVALID_EA)
    x = int.from_bytes(salt_key, "big") ^ ((csb_id << 64) | int.from_bytes(t64, "big"))
    return x.to_bytes(14, "big") + b"\x00\x00"


def aes_cm(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES in counter mode from ``iv`` (AES-CM, RFC 3711 4.1.1); encrypts and decrypts."""
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def _aes_ecb(key: bytes, decrypt: bool = False) -> Callable[[bytes], bytes]:
    c = Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305 - RFC 3394 block steps
    ctx = c.decryptor() if decrypt else c.encryptor()
    return ctx.update


def aes_kw_wrap(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """RFC 3394 key wrap with initial value ``iv`` (MIKEY: the 64-bit salt_key)."""
    n = len(plaintext) // 8
    if len(plaintext) % 8 or n < 2 or len(iv) != 8:
        raise MikeyError("AES-KW needs whole 64-bit blocks (at least 2) and a 64-bit IV", -1,
                         ErrNo.INVALID_EA)  # fmt: skip
    enc = _aes_ecb(key)
    a = iv
    r = [plaintext[i * 8 : i * 8 + 8] for i in range(n)]
    for j in range(6):
        for i in range(n):
            b = enc(a + r[i])
            t = n * j + i + 1
            a = (int.from_bytes(b[:8], "big") ^ t).to_bytes(8, "big")
            r[i] = b[8:]
    return a + b"".join(r)


def aes_kw_unwrap(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """RFC 3394 key unwrap; raises MikeyError(AUTH_FAILURE) when the integrity check fails."""
    n = len(ciphertext) // 8 - 1
    if len(ciphertext) % 8 or n < 2 or len(iv) != 8:
        raise MikeyError("AES-KW data is not whole 64-bit blocks", -1, ErrNo.INVALID_EA)
    dec = _aes_ecb(key, decrypt=True)
    a = ciphertext[:8]
    r = [ciphertext[8 + i * 8 : 16 + i * 8] for i in range(n)]
    for j in range(5, -1, -1):
        for i in range(n - 1, -1, -1):
            t = n * j + i + 1
            b = dec((int.from_bytes(a, "big") ^ t).to_bytes(8, "big") + r[i])
            a = b[:8]
            r[i] = b[8:]
    if not hmac.compare_digest(a, iv):
        raise MikeyError("AES-KW integrity check failed", -1, ErrNo.AUTH_FAILURE)
    return b"".join(r)


def kemac_crypt(
    encr_alg: EncrAlg,
    keys: MessageKeys,
    csb_id: int,
    t64: bytes,
    data: bytes,
    *,
    decrypt: bool,
) -> bytes:
    """Encrypt or decrypt KEMAC Encr data with the message's encr_key / salt_key."""
    if encr_alg is EncrAlg.NULL:
        return data
    if encr_alg is EncrAlg.AES_KW_128:
        if decrypt:
            return aes_kw_unwrap(keys.encr_key, keys.salt_key, data)
        return aes_kw_wrap(keys.encr_key, keys.salt_key, data)
    return aes_cm(keys.encr_key, aes_cm_iv(keys.salt_key, csb_id, t64), data)
