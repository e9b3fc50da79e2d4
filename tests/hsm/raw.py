"""Raw PKCS#11 calls through ctypes, to read the token's own answer (not python-pkcs11's
client-side capability checks). Callers hold hsm.vault.PKCS11_LOCK.

The module is dlopen()ed again by path, which returns the same loaded library (same SoftHSM state,
same sessions and object handles) as python-pkcs11's.
"""

from __future__ import annotations

import ctypes

CKR_OK = 0x0
CKR_KEY_TYPE_INCONSISTENT = 0x63
CKR_KEY_FUNCTION_NOT_PERMITTED = 0x68
CKR_WRAPPING_KEY_TYPE_INCONSISTENT = 0x115
CKM_AES_ECB = 0x1081
CKM_AES_CMAC = 0x108A
CKM_SHA256_HMAC = 0x251
CKM_AES_KEY_WRAP = 0x2109


class _Mechanism(ctypes.Structure):
    _fields_ = [
        ("mechanism", ctypes.c_ulong),
        ("pParameter", ctypes.c_void_p),
        ("ulParameterLen", ctypes.c_ulong),
    ]


class Raw:
    def __init__(self, module_path: str) -> None:
        self.dll = ctypes.CDLL(module_path)

    def sign_init(self, session: int, key: int, mechanism: int) -> int:
        mech = _Mechanism(mechanism, None, 0)
        rv: int = self.dll.C_SignInit(
            ctypes.c_ulong(session), ctypes.byref(mech), ctypes.c_ulong(key)
        )
        if rv == CKR_OK:  # finish the operation so the session is usable again
            out = ctypes.create_string_buffer(64)
            n = ctypes.c_ulong(64)
            self.dll.C_Sign(ctypes.c_ulong(session), b"x", ctypes.c_ulong(1), out, ctypes.byref(n))
        return rv

    def encrypt_init(self, session: int, key: int, mechanism: int) -> int:
        mech = _Mechanism(mechanism, None, 0)
        rv: int = self.dll.C_EncryptInit(
            ctypes.c_ulong(session), ctypes.byref(mech), ctypes.c_ulong(key)
        )
        if rv == CKR_OK:
            out = ctypes.create_string_buffer(64)
            n = ctypes.c_ulong(64)
            self.dll.C_Encrypt(
                ctypes.c_ulong(session), b"0" * 16, ctypes.c_ulong(16), out, ctypes.byref(n)
            )
        return rv

    def wrap(self, session: int, wrapping_key: int, key: int, mechanism: int) -> int:
        mech = _Mechanism(mechanism, None, 0)
        out = ctypes.create_string_buffer(256)
        n = ctypes.c_ulong(256)
        rv: int = self.dll.C_WrapKey(
            ctypes.c_ulong(session),
            ctypes.byref(mech),
            ctypes.c_ulong(wrapping_key),
            ctypes.c_ulong(key),
            out,
            ctypes.byref(n),
        )
        return rv
