"""No object of a call prints key material: a log line, an exception message or a traceback's
locals that show a UE's state, a decoded MIKEY message, session keys or released keys must not
carry a PSK, an MPK, a TEK, a salt or the KEMAC/ticket ciphertext they come from. One call through
the in-memory KMS (no I/O), then every object that holds a secret is printed."""

from __future__ import annotations

import dataclasses
import os

from firmware.core.ours import open_ours
from firmware.core.xk import GetKeysRequest, TargetRole
from firmware.mikey.constants import EncrAlg, KeyDataType
from firmware.mikey.crypto import message_keys
from firmware.mikey.message import decode
from firmware.mikey.payloads import KeyData
from firmware.mikey.prf import PrfFunc
from tests.calls import ALICE, BOB, KMS
from tests.core.world import PSKS, World


def _hidden(secret: bytes, text: str) -> bool:
    """`secret` appears in `text` neither as Python shows bytes nor as hex (either case)."""
    shown = repr(secret)[2:-1]
    return shown[:24] not in text and secret.hex() not in text and secret.hex().upper() not in text


def test_no_object_of_a_call_prints_a_key_or_its_ciphertext() -> None:
    world = World()
    answered: list[bytes] = []  # the KMS's REQUEST_RESP and RESOLVE_RESP (their KEMACs)
    exchange = world.ues.exchange
    world.ues.exchange = lambda m: answered.append(exchange(m)) or answered[-1]
    offer = world.offer(forking=True, responders=(BOB,))
    answer = world.answer(offer, BOB)
    liid = world.warrant(ALICE)
    released = world.get_keys(offer.transfer_init, ALICE, TargetRole.INITIATOR, liid)
    alice, bob = offer.alice, answer.responder
    init, resp = decode(offer.transfer_init), decode(answer.transfer_resp)
    kms_answers = [decode(m) for m in answered]
    opened = open_ours(init, world.vault, KMS, world.store)
    k1 = message_keys(PrfFunc.MIKEY_1, PSKS[ALICE], 7, response=False, rand_i=os.urandom(32),
                      rand_r=None, encr_alg=EncrAlg.AES_CM_128)  # fmt: skip

    secrets = [PSKS[ALICE], PSKS[BOB], alice.mpki, bob.mpki]
    secrets += [k for k in (alice.mpkr, bob.mpkr_forked) if k]
    secrets += [b for s in answer.keys for b in (s.tek, s.salt)]
    secrets += [b for s in released.sessions for b in (s.key, s.salt)]
    secrets += [b for k in (*alice.keys, *bob.keys) for b in (k.key, k.salt) if b]
    secrets += [opened.mpk, opened.mpki, opened.mpkr, k1.encr_key, k1.auth_key, k1.salt_key]
    secrets += [b for k in opened.session_keys for b in (k.key, k.salt) if b]
    for message in (init, resp, *kms_answers):
        for payload in message.payloads:
            for f in dataclasses.fields(payload):
                if f.name in ("encr_data", "ticket_data"):
                    secrets.append(getattr(payload, f.name))
    assert len(answered) == 2 and len(secrets) >= 20 and all(len(s) >= 8 for s in secrets)
    assert any(isinstance(k, KeyData) for k in alice.keys)

    request = GetKeysRequest(
        ALICE, TargetRole.INITIATOR, offer.transfer_init, answer.transfer_resp, liid, "c"
    )
    shown = [alice, bob, init, resp, *kms_answers, answer.keys, released, request, opened, k1]
    salted = KeyData(KeyDataType.TEK_SALT, os.urandom(16), os.urandom(14))  # none in this call
    secrets += [salted.key, salted.salt]
    shown += [*alice.keys, *bob.keys, *opened.session_keys, salted]
    shown += [p for m in (init, resp, *kms_answers) for p in m.payloads]
    text = " ".join(repr(o) + str(o) for o in shown)
    leaked = [s.hex()[:16] for s in secrets if not _hidden(s, text)]
    assert not leaked, f"printed: {leaked}"
