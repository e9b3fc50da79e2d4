"""Vault overhead: Pkcs11Vault calls against the same raw python-pkcs11 calls, one thread.

Run from the repository root: `python -m bench.bench_vault [--seconds S] [--rounds N]`.
It creates its own throw-away SoftHSM token (never touches a configured one), opens a vault with
session copies, and runs raw python-pkcs11 on a second session of the same token with its own
session copies of the same keys, so both sides do identical PKCS#11 work. Vault and raw loops
alternate for several rounds; the best round of each counts (least disturbed by other load).
Overhead = raw ops/s / vault ops/s - 1 (goal: <= 15%: the lock, checks and bookkeeping).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

from firmware.core.ports import KeyName
from firmware.mikey.prf import PrfFunc, prf_with_hmac
from hsm.softhsm import create_token

LABEL = bytes.fromhex("2d22ac75ff0102030401") + b"\x10" + bytes(range(0xA0, 0xB0)) + b"\x00"
DATA = bytes(range(256))


def rate(fn: Callable[[], object], seconds: float) -> float:
    batch = 100
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kms-bench-") as tmp:
        token = create_token(tmp, "kms-bench", "bench-pin-1", "bench-so-pin-1")
        os.environ["SOFTHSM2_CONF"] = str(token.conf)
        # Imported only now: SOFTHSM2_CONF must be set before the library loads.
        from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

        from hsm.templates import PSK_IN_TOKEN, SESSION_COPY, TRANSIENT_PSK, key_label
        from hsm.vault import PKCS11_LOCK, Pkcs11Vault, VaultSettings

        vault = Pkcs11Vault.open(
            VaultSettings(token_uri=token.uri, module_path=token.module_path), monitor=False
        )
        vault.ensure_keys()
        tpk_v = vault.active_version(KeyName.TICKET_PROTECTION)
        with PKCS11_LOCK:
            raw_tok = vault._conn.session.token
            raw = raw_tok.open(rw=True)  # the vault's session carries the login

            def copy_of(name: KeyName, version: int) -> object:
                (obj,) = list(
                    raw.get_objects(
                        {
                            Attribute.CLASS: ObjectClass.SECRET_KEY,
                            Attribute.TOKEN: True,
                            Attribute.LABEL: key_label(name, version),
                        }
                    )
                )
                return obj.copy(SESSION_COPY)

            tpk = copy_of(KeyName.TICKET_PROTECTION, tpk_v)
            kek = copy_of(KeyName.KEY_ENCRYPTION, vault.active_version(KeyName.KEY_ENCRYPTION))
        psk = bytes(range(16))
        psk32 = bytes(range(32))
        wrapped32 = vault.wrap_psk(psk32)

        def raw_prf(func: PrfFunc, mech: Mechanism) -> Callable[[], object]:
            sign = tpk.sign  # type: ignore[attr-defined]
            return lambda: prf_with_hmac(func, lambda d: sign(d, mechanism=mech), LABEL, 16)

        def raw_wrap() -> bytes:
            obj = raw.create_object({**TRANSIENT_PSK, Attribute.VALUE: psk})
            try:
                return bytes(kek.wrap_key(obj, mechanism=Mechanism.AES_KEY_WRAP))  # type: ignore[attr-defined]
            finally:
                obj.destroy()

        def raw_unwrap_into_token() -> object:
            return kek.unwrap_key(  # type: ignore[attr-defined]
                ObjectClass.SECRET_KEY,
                KeyType.GENERIC_SECRET,
                wrapped32.blob,
                mechanism=Mechanism.AES_KEY_WRAP,
                store=False,
                template=PSK_IN_TOKEN,
            )

        raw_psk = raw_unwrap_into_token()

        def raw_unwrap_once() -> None:
            obj = raw_unwrap_into_token()
            sign = obj.sign  # type: ignore[attr-defined]
            mech = Mechanism.SHA256_HMAC
            prf_with_hmac(PrfFunc.PRF_HMAC_SHA_256, lambda d: sign(d, mechanism=mech), LABEL, 32)
            obj.destroy()  # type: ignore[attr-defined]

        def raw_psk_prf() -> bytes:
            sign = raw_psk.sign  # type: ignore[attr-defined]
            mech = Mechanism.SHA256_HMAC
            return prf_with_hmac(
                PrfFunc.PRF_HMAC_SHA_256, lambda d: sign(d, mechanism=mech), LABEL, 32
            )

        def vault_psk_miss() -> None:
            vault.forget_psk(wrapped32)
            vault.psk_prf(wrapped32, PrfFunc.PRF_HMAC_SHA_256, [(LABEL, 32)])

        assert [raw_psk_prf()] == vault.psk_prf(wrapped32, PrfFunc.PRF_HMAC_SHA_256, [(LABEL, 32)])
        assert [raw_prf(PrfFunc.MIKEY_1, Mechanism.SHA_1_HMAC)()] == vault.ticket_prf(
            tpk_v, PrfFunc.MIKEY_1, [(LABEL, 16)]
        )
        cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
            (
                "ticket_prf MIKEY-1 16 B (2 C_Sign)",
                lambda: vault.ticket_prf(tpk_v, PrfFunc.MIKEY_1, [(LABEL, 16)]),
                raw_prf(PrfFunc.MIKEY_1, Mechanism.SHA_1_HMAC),
            ),
            (
                "ticket_prf SHA-256 16 B (2 C_Sign)",
                lambda: vault.ticket_prf(tpk_v, PrfFunc.PRF_HMAC_SHA_256, [(LABEL, 16)]),
                raw_prf(PrfFunc.PRF_HMAC_SHA_256, Mechanism.SHA256_HMAC),
            ),
            (
                "ticket_hmac SHA-256 256 B",
                lambda: vault.ticket_hmac(tpk_v, PrfFunc.PRF_HMAC_SHA_256, DATA),
                lambda: tpk.sign(DATA, mechanism=Mechanism.SHA256_HMAC),  # type: ignore[attr-defined]
            ),
            ("wrap_psk 16 B", lambda: vault.wrap_psk(psk), raw_wrap),
            (
                "psk_prf SHA-256 32 B, held (2 C_Sign)",
                lambda: vault.psk_prf(wrapped32, PrfFunc.PRF_HMAC_SHA_256, [(LABEL, 32)]),
                raw_psk_prf,
            ),
            ("psk_prf, not held (unwrap+2 C_Sign+destroy)", vault_psk_miss, raw_unwrap_once),
            ("random_bytes 32 B", lambda: vault.random_bytes(32), lambda: raw.generate_random(256)),
        ]
        print(f"# vault vs raw python-pkcs11, 1 thread, best of {args.rounds} x {args.seconds}s")
        print(f"{'operation':44} {'raw ops/s':>11} {'vault ops/s':>12} {'overhead':>9}")
        for name, vault_fn, raw_fn in cases:
            best_v = best_r = 0.0
            for _ in range(args.rounds):
                best_r = max(best_r, rate(raw_fn, args.seconds))
                best_v = max(best_v, rate(vault_fn, args.seconds))
            overhead = (best_r / best_v - 1) * 100
            print(f"{name:44} {best_r:11,.0f} {best_v:12,.0f} {overhead:8.1f}%")
        with PKCS11_LOCK:
            raw.close()
        vault.close()


if __name__ == "__main__":
    main()
