"""Initialise a PKCS#11 token and its user PIN through the standard PKCS#11 calls (ctypes).

Why not softhsm2-util: it takes PINs on its argv (visible in the process table) or from a
terminal only. Here the PINs arrive on standard input and go straight into C_InitToken and
C_InitPIN; they are never in an argv, a file or a log.
Rules: the first slot whose token is not yet initialised (CKF_TOKEN_INITIALIZED clear) is used;
every PKCS#11 error is reported with its return value only.
"""

from __future__ import annotations

import ctypes
import sys

CKF_RW_SESSION, CKF_SERIAL_SESSION = 0x2, 0x4
CKU_SO = 0
TOKEN_INFO_FLAGS_OFFSET = 96  # label[32] manufacturerID[32] model[16] serialNumber[16], flags


class Pkcs11Error(RuntimeError):
    pass


def _check(name: str, rv: int) -> None:
    if rv != 0:
        raise Pkcs11Error(f"{name} failed (CKR 0x{rv:x})")


def _tokens(lib: ctypes.CDLL) -> list[tuple[int, bytes]]:
    """(slot id, raw CK_TOKEN_INFO) of every slot with a token."""
    ulong = ctypes.c_ulong
    count = ulong(0)
    _check("C_GetSlotList", lib.C_GetSlotList(1, None, ctypes.byref(count)))
    slots = (ulong * count.value)()
    _check("C_GetSlotList", lib.C_GetSlotList(1, slots, ctypes.byref(count)))
    out = []
    for slot in slots[: count.value]:
        info = ctypes.create_string_buffer(512)
        _check("C_GetTokenInfo", lib.C_GetTokenInfo(ulong(slot), info))
        out.append((int(slot), info.raw))
    return out


def init_token(module: str, label: str, so_pin: bytes, user_pin: bytes) -> None:
    lib = ctypes.CDLL(module)
    ulong = ctypes.c_ulong
    _check("C_Initialize", lib.C_Initialize(None))
    try:
        at = TOKEN_INFO_FLAGS_OFFSET
        free = next(
            (s for s, info in _tokens(lib) if not ulong.from_buffer_copy(info, at).value & 0x400),
            None,
        )  # CKF_TOKEN_INITIALIZED clear
        if free is None:
            raise Pkcs11Error("no uninitialised token")
        padded = label.encode().ljust(32, b" ")[:32]
        _check("C_InitToken", lib.C_InitToken(ulong(free), so_pin, ulong(len(so_pin)), padded))
        # SoftHSM moves a freshly initialised token to a new slot id: find it by label.
        target = next((slot for slot, info in _tokens(lib) if info[:32] == padded), None)
        if target is None:
            raise Pkcs11Error("initialised token not found")
        session = ulong(0)
        _check(
            "C_OpenSession",
            lib.C_OpenSession(
                ulong(target), ulong(CKF_SERIAL_SESSION | CKF_RW_SESSION), None, None,
                ctypes.byref(session),
            ),
        )  # fmt: skip
        try:
            _check("C_Login", lib.C_Login(session, ulong(CKU_SO), so_pin, ulong(len(so_pin))))
            _check("C_InitPIN", lib.C_InitPIN(session, user_pin, ulong(len(user_pin))))
            lib.C_Logout(session)
        finally:
            lib.C_CloseSession(session)
    finally:
        lib.C_Finalize(None)


def main(module: str, label: str) -> int:
    """Read the SO PIN and the user PIN (one per line) from standard input."""
    lines = sys.stdin.buffer.read().split(b"\n")
    if len(lines) < 2 or not lines[0] or not lines[1]:
        print("kmsnode-image: token-init needs two PIN lines on standard input", file=sys.stderr)
        return 2
    try:
        init_token(module, label, lines[0], lines[1])
    except (OSError, Pkcs11Error) as exc:
        print(f"kmsnode-image: token-init: {exc}", file=sys.stderr)
        return 1
    return 0
