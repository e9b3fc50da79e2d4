"""The hot PKCS#11 calls made without releasing the GIL (ctypes.PyDLL on the same module).

Why: python-pkcs11 releases the GIL around every C call. Inside a multi-threaded gRPC server each
of the ~20 calls a ticket exchange makes then hands the GIL to another thread and waits to get it
back, which costs far more than the call itself (a SoftHSM HMAC takes ~6 us; perf-ceilings.md 4
measured 24 us of calls turning into 62 us of wall time). Every PKCS#11 call of the process
already runs under hsm.vault.PKCS11_LOCK, so holding the GIL as well loses no parallelism.

Rules:
- Only C_SignInit/C_Sign, C_GenerateRandom and C_UnwrapKey/C_GetAttributeValue/C_DestroyObject,
  on session and object handles that python-pkcs11 opened and owns.
- The reused output buffer is cleared once a PSK value is copied out of it, so the process keeps
  no copy of the last PSK between requests beyond the caller's own.
- Callers hold PKCS11_LOCK. A non-zero CK_RV raises DirectCallFailed; the vault then repeats the
  operation through python-pkcs11, which raises its usual, mapped exception (so error handling
  stays in one place, hsm/errors.py).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from enum import Enum
from typing import Any

_ULONG = ctypes.c_ulong


class _Mechanism(ctypes.Structure):
    _fields_ = [("mechanism", _ULONG), ("parameter", ctypes.c_void_p), ("length", _ULONG)]


class _Attribute(ctypes.Structure):
    _fields_ = [("type", _ULONG), ("value", ctypes.c_void_p), ("length", _ULONG)]


class DirectCallFailed(Exception):
    """A direct call returned CK_RV `rv`; repeat it through python-pkcs11 for the mapped error."""

    def __init__(self, function: str, rv: int) -> None:
        super().__init__(f"{function} returned 0x{rv:08x}")
        self.rv = rv


class DirectCalls:
    """Direct entry points of one PKCS#11 module (already loaded and initialised elsewhere)."""

    def __init__(self, module_path: str) -> None:
        dll = ctypes.PyDLL(module_path)
        p, u = ctypes.c_void_p, _ULONG
        self._sign_init = self._fn(dll, "C_SignInit", [u, p, u])
        self._sign = self._fn(dll, "C_Sign", [u, p, u, p, p])
        self._unwrap = self._fn(dll, "C_UnwrapKey", [u, p, u, p, u, p, u, p])
        # Reused between calls: every call runs under PKCS11_LOCK, one at a time.
        self._mechanisms: dict[int, Any] = {}
        self._templates: dict[tuple[Any, ...], tuple[Any, int, list[Any]]] = {}
        self._out = ctypes.create_string_buffer(64)
        self._size = _ULONG(64)
        self._get_attr = self._fn(dll, "C_GetAttributeValue", [u, u, p, u])
        self._destroy = self._fn(dll, "C_DestroyObject", [u, u])
        self._generate_random = self._fn(dll, "C_GenerateRandom", [u, p, u])

    @staticmethod
    def _fn(dll: Any, name: str, argtypes: list[Any]) -> Any:
        fn = getattr(dll, name)
        fn.argtypes = argtypes
        fn.restype = _ULONG
        return fn

    def _mechanism(self, mechanism: int) -> Any:
        ref = self._mechanisms.get(mechanism)
        if ref is None:
            mech = _Mechanism(mechanism, None, 0)
            ref = self._mechanisms[mechanism] = (mech, ctypes.byref(mech))
        return ref[1]

    def sign(self, session: int, key: int, mechanism: int, data: bytes) -> bytes:
        rv = self._sign_init(session, self._mechanism(mechanism), key)
        if rv:
            raise DirectCallFailed("C_SignInit", rv)
        size = self._size
        size.value = 64
        rv = self._sign(session, data, len(data), self._out, ctypes.byref(size))
        if rv:
            raise DirectCallFailed("C_Sign", rv)
        return self._out.raw[: size.value]

    def random(self, session: int, n: int) -> bytes:
        """`n` bytes of C_GenerateRandom (a fresh buffer: random bytes become keys and RANDs)."""
        out = ctypes.create_string_buffer(n)
        rv = self._generate_random(session, out, n)
        if rv:
            raise DirectCallFailed("C_GenerateRandom", rv)
        return out.raw

    def _template(self, template: Mapping[Any, Any]) -> tuple[Any, int]:
        """The CK_ATTRIBUTE array of `template`, built once per distinct template."""
        key = tuple(template.items())
        found = self._templates.get(key)
        if found is None:
            keep: list[Any] = []
            attrs = (_Attribute * len(template))()
            for i, (kind, value) in enumerate(key):
                if isinstance(value, bool):
                    raw: Any = ctypes.c_ubyte(1 if value else 0)
                else:
                    raw = _ULONG(int(value.value if isinstance(value, Enum) else value))
                keep.append(raw)
                attrs[i] = _Attribute(
                    int(kind), ctypes.cast(ctypes.byref(raw), ctypes.c_void_p), ctypes.sizeof(raw)
                )
            found = self._templates[key] = (attrs, len(key), keep)
        return found[0], found[1]

    def unwrap_value(
        self, session: int, kek: int, mechanism: int, blob: bytes, template: Mapping[Any, Any]
    ) -> bytes:
        """Unwrap `blob` into a transient object, read its CKA_VALUE, destroy it."""
        attrs, count = self._template(template)
        handle = _ULONG(0)
        rv = self._unwrap(
            session,
            self._mechanism(mechanism),
            kek,
            blob,
            len(blob),
            attrs,
            count,
            ctypes.byref(handle),
        )
        if rv:
            raise DirectCallFailed("C_UnwrapKey", rv)
        try:
            attr = _Attribute(0x11, ctypes.cast(self._out, ctypes.c_void_p), 64)  # CKA_VALUE
            rv = self._get_attr(session, handle.value, ctypes.byref(attr), 1)
            if rv:
                raise DirectCallFailed("C_GetAttributeValue", rv)
            value = self._out.raw[: attr.length]
            ctypes.memset(self._out, 0, attr.length)  # the PSK stays only with the caller
            return value
        finally:
            self._destroy(session, handle.value)
